"""A tiny, seeded I-Scene package in the official layouts, for tests, CI and offline demos.

Same classes, key names, file names and storage dtypes as the release, at small widths and depths:
``DIR/iscene_config.json`` + ``config.yml`` + ``ckpts/*.pt`` (the I-Scene half), with its TRELLIS base in
``DIR/trellis-image-tiny/`` (``pipeline.json`` + ``ckpts/<stem>.json|.safetensors``), wired through
``base_model_id``. Its output is meaningless geometry, but every code path runs exactly as with the release.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import yaml
from safetensors.torch import save_file

from .. import segment
from ..engine.packages.layouts import ISCENE_CONFIG_JSON, PIPELINE_JSON, SS_ENCODER_STEM
from ..nn.precision import TorsoPrecision
from ..nn.registry import build_network
from ..nn.slat_mesh_decoder import MESH_CHANNELS, SLatMeshDecoder
from ..nn.ss_decoder import SparseStructureDecoder
from ..segment.model import PACKAGE_FOLDER
from .sam import write_tiny_sam

BASE_DIR = "trellis-image-tiny"
SEED = 20260101
OCCUPANCY_FRACTION = 0.002  # of the 64^3 grid (~500 cells): keeps tiny stage-2 and mesh work small on a CPU

RELEASED_SLAT_NORMALIZATION = {
    "mean": [-2.1687545776367188, -0.004347046371549368, -0.13352349400520325, -0.08418072760105133,
             -0.5271206498146057, 0.7238689064979553, -1.1414450407028198, 1.2039363384246826],
    "std": [2.377650737762451, 2.386378288269043, 2.124418020248413, 2.1748552322387695,
            2.663944721221924, 2.371192216873169, 2.6217446327209473, 2.684523105621338],
}
RELEASED_SAMPLER = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                    "params": {"steps": 25, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}

TINY_SS_FLOW = {"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 64, "cond_channels": 32,
                "num_blocks": 4, "num_heads": 2, "mlp_ratio": 4, "patch_size": 2, "pe_mode": "ape",
                "qk_rms_norm": True, "use_fp16": True}
TINY_DENOISER = {**TINY_SS_FLOW, "scene_context_attn_num": 2, "learning_pattern": "full-finetune",
                 "exp_setting": "global"}
TINY_SS_DECODER = {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 1, "channels": [32, 16, 8],
                   "num_res_blocks_middle": 1, "use_fp16": True}
TINY_SS_ENCODER = {"in_channels": 1, "latent_channels": 8, "num_res_blocks": 1, "channels": [8, 16, 32],
                   "num_res_blocks_middle": 1, "use_fp16": True}
TINY_SLAT_FLOW = {"resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": 64, "cond_channels": 32,
                  "num_blocks": 2, "num_heads": 2, "mlp_ratio": 4, "patch_size": 2, "num_io_res_blocks": 2,
                  "io_block_channels": [32], "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": True}
# 256 is the smallest width the mesh decoder allows (GroupNorm(32, C/8) in its subdivision blocks).
TINY_MESH_DECODER = {"resolution": 64, "model_channels": 256, "latent_channels": 8, "num_blocks": 2, "num_heads": 4,
                     "mlp_ratio": 1, "attn_mode": "swin", "window_size": 8, "use_fp16": True,
                     "representation_config": {"use_color": True}}
RELEASED_GAUSSIANS = {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
                      "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": 32, "2d_filter_kernel_size": 0.1,
                      "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3, "opacity_bias": 0.1,
                      "scaling_activation": "softplus"}
TINY_GS_DECODER = {"resolution": 64, "model_channels": 64, "latent_channels": 8, "num_blocks": 2, "num_heads": 2,
                   "mlp_ratio": 2, "attn_mode": "swin", "window_size": 8, "use_fp16": True,
                   "representation_config": RELEASED_GAUSSIANS}
# The release's keys; the preset holds the tiny DINOv2's sizes (its width is the flow models' cond_channels).
TINY_CONDITIONER = {"image_cond_model": "dinov2_tiny14_reg", "cond_in_channels": 3, "use_fp16": False}

RELEASE_SS_FLOW = {"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 1024,
                   "cond_channels": 1024, "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4, "patch_size": 1,
                   "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": True}
RELEASE_SIZES = {
    "denoiser": {**RELEASE_SS_FLOW, "scene_context_attn_num": 5, "learning_pattern": "full-finetune",
                 "exp_setting": "global"},
    "image_conditioner": {"image_cond_model": "dinov2_vitl14_reg", "cond_in_channels": 3, "use_fp16": False},
    "sparse_structure_decoder": {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 2,
                                 "num_res_blocks_middle": 2, "channels": [512, 128, 32], "use_fp16": True},
    "sparse_structure_encoder": {"in_channels": 1, "latent_channels": 8, "num_res_blocks": 2,
                                 "num_res_blocks_middle": 2, "channels": [32, 128, 512], "use_fp16": True},
    "sparse_structure_flow_model": RELEASE_SS_FLOW,
    "slat_flow_model": {"resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": 1024,
                        "cond_channels": 1024, "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4, "patch_size": 2,
                        "num_io_res_blocks": 2, "io_block_channels": [128], "pe_mode": "ape", "qk_rms_norm": True,
                        "use_fp16": True},
    "slat_decoder_mesh": {"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12,
                          "num_heads": 12, "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": True,
                          "representation_config": {"use_color": True}},
    "slat_decoder_gs": {"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12,
                        "num_heads": 12, "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": True,
                        "representation_config": RELEASED_GAUSSIANS},
}
TINY_SIZES = {"denoiser": TINY_DENOISER, "image_conditioner": TINY_CONDITIONER,
              "sparse_structure_decoder": TINY_SS_DECODER, "sparse_structure_encoder": TINY_SS_ENCODER,
              "sparse_structure_flow_model": TINY_SS_FLOW, "slat_flow_model": TINY_SLAT_FLOW,
              "slat_decoder_mesh": TINY_MESH_DECODER, "slat_decoder_gs": TINY_GS_DECODER}
# Release-size packages are for GPU benchmarks: about 20k occupied voxels per object, as real scenes have.
RELEASE_OCCUPANCY_FRACTION = 20_000 / 64 ** 3

# role in pipeline.json -> (checkpoint stem, class name)
TRELLIS_NETWORKS = {
    "sparse_structure_decoder": ("ckpts/ss_dec_conv3d_16l8_fp16", "SparseStructureDecoder"),
    "sparse_structure_flow_model": ("ckpts/ss_flow_img_dit_L_16l8_fp16", "SparseStructureFlowModel"),
    "slat_flow_model": ("ckpts/slat_flow_img_dit_L_64l8p2_fp16", "SLatFlowModel"),
    "slat_decoder_mesh": ("ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16", "SLatMeshDecoder"),
    "slat_decoder_gs": ("ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16", "SLatGaussianDecoder"),
}
EXTRA_TRELLIS_NETWORKS = {"sparse_structure_encoder": (SS_ENCODER_STEM, "SparseStructureEncoder")}


def _seeded(name: str, args: dict, seed: int) -> nn.Module:
    """Build a network with seeded weights, rounded to float16 like a released checkpoint's values."""
    torch.manual_seed(seed)
    net = build_network(name, args)
    with torch.no_grad():
        for param_name, param in net.named_parameters():
            if param_name.endswith(("cls_token", "pos_embed", "register_tokens", "mask_token")):
                param.normal_(0.0, 0.5)
            param.copy_(param.half().float())
    return net.eval()


def _calibrate_occupancy(decoder: SparseStructureDecoder, fraction: float, seed: int) -> None:
    """Shift the output bias so about ``fraction`` of the grid is occupied for unit-Gaussian latents."""
    generator = torch.Generator().manual_seed(seed)
    bias = decoder.out_layer[2].bias
    latents = torch.randn(4, decoder.input_layer.in_channels, 16, 16, 16, generator=generator, device="cpu")
    with torch.no_grad():
        logits = decoder(latents.to(bias.device)).flatten().cpu()
        sample = torch.randperm(logits.numel(), generator=generator, device="cpu")[:2 ** 20]
        threshold = torch.quantile(logits[sample], 1.0 - fraction)
        bias -= threshold.to(bias.device)


def _bias_mesh_head_inside(decoder: SLatMeshDecoder) -> None:
    """Make the corner SDFs clearly negative, so the tiny decoder's surfaces follow the stage-1 voxels
    (readable shapes in demos) instead of wrapping random noise."""
    sdf = slice(*MESH_CHANNELS["sdf"])
    with torch.no_grad():
        decoder.out_layer.weight[sdf] *= 0.05
        decoder.out_layer.bias[sdf] = -1.0


def _stored_state(net: nn.Module, use_fp16: bool) -> dict[str, torch.Tensor]:
    """The state dict in the release's storage dtypes (half-precision torso when ``use_fp16``)."""
    if use_fp16 and isinstance(net, TorsoPrecision):
        net.set_torso_dtype(torch.float16)
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    if isinstance(net, TorsoPrecision):
        net.set_torso_dtype(torch.float32)
    return state


def random_network(name: str, args: dict, seed: int, occupancy: float = OCCUPANCY_FRACTION,
                   device: torch.device | str = "cpu") -> nn.Module:
    """A network with the tiny package's seeded weights, built directly on ``device`` (float32): the SS
    decoder calibrated to occupy about ``occupancy`` of the grid, the mesh head biased inside."""
    with torch.device(device):
        net = _seeded(name, args, seed)
        if isinstance(net, SparseStructureDecoder):
            _calibrate_occupancy(net, occupancy, seed)
        if isinstance(net, SLatMeshDecoder):
            _bias_mesh_head_inside(net)
    return net


def write_package_configs(directory: str | Path, sizes: dict[str, dict], model_name: str) -> Path:
    """The package's config files (no weights): ``iscene_config.json``, ``config.yml``, the base's
    ``pipeline.json`` and one ``ckpts/<stem>.json`` per TRELLIS network, with ``sizes`` (role -> args)."""
    root = Path(directory)
    base = root / BASE_DIR
    for role, (stem, name) in {**TRELLIS_NETWORKS, **EXTRA_TRELLIS_NETWORKS}.items():
        (base / stem).parent.mkdir(parents=True, exist_ok=True)
        (base / f"{stem}.json").write_text(json.dumps({"name": name, "args": sizes[role]}, indent=4))
    pipeline = {
        "name": "TrellisImageTo3DPipeline",
        "args": {
            "models": {role: stem for role, (stem, _) in TRELLIS_NETWORKS.items()},
            "sparse_structure_sampler": RELEASED_SAMPLER,
            "slat_sampler": RELEASED_SAMPLER,
            "slat_normalization": RELEASED_SLAT_NORMALIZATION,
            "image_cond_model": "dinov2_vitl14_reg",
        },
    }
    (base / PIPELINE_JSON).write_text(json.dumps(pipeline, indent=4))
    config = {
        "models": {
            "denoiser": {"name": "SparseStructureSceneContextFlowModel", "args": sizes["denoiser"]},
            "img_conditioner": {"name": "ImageConditioner", "args": sizes["image_conditioner"]},
        },
        "dataset": {"args": {"exp_setting": sizes["denoiser"]["exp_setting"]}},
    }
    (root / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / ISCENE_CONFIG_JSON).write_text(json.dumps({
        "model_name": model_name,
        "base_model_id": BASE_DIR,
        "config_file": "config.yml",
        "denoiser_checkpoint": "ckpts/iscene_denoiser.pt",
        "image_conditioner_checkpoint": "ckpts/iscene_image_conditioner.pt",
    }, indent=4))
    return root


def write_tiny_package(directory: str | Path, seed: int = SEED, release_sizes: bool = False) -> Path:
    """Write the tiny package into ``directory`` (created if needed) and return its path.

    ``release_sizes`` writes the same random-weight package at the release's sizes instead (about 4.6 GB,
    minutes on a CPU): full-size timing and memory figures without downloading the real weights.
    With the ``[segment]`` extra installed, a seeded SAM goes into ``DIR/sam`` (the server's default
    segmentation model for this package); without it that folder is left out.
    """
    sizes = RELEASE_SIZES if release_sizes else TINY_SIZES
    occupancy = RELEASE_OCCUPANCY_FRACTION if release_sizes else OCCUPANCY_FRACTION
    root = write_package_configs(directory, sizes,
                                 "IScene-random-release-size" if release_sizes else "IScene-tiny")
    base = root / BASE_DIR
    networks = {**TRELLIS_NETWORKS, **EXTRA_TRELLIS_NETWORKS}
    for offset, (role, (stem, name)) in enumerate(networks.items()):
        net = random_network(name, sizes[role], seed + offset, occupancy)
        save_file(_stored_state(net, sizes[role].get("use_fp16", False)), str(base / f"{stem}.safetensors"))
        del net
    (root / "ckpts").mkdir(parents=True, exist_ok=True)
    denoiser = _seeded("SparseStructureSceneContextFlowModel", sizes["denoiser"], seed + 100)
    torch.save(_stored_state(denoiser, True), root / "ckpts" / "iscene_denoiser.pt")
    del denoiser
    conditioner = _seeded("ImageConditioner", sizes["image_conditioner"], seed + 101)
    torch.save(_stored_state(conditioner, False), root / "ckpts" / "iscene_image_conditioner.pt")
    if segment.available():
        write_tiny_sam(root / PACKAGE_FOLDER, seed + 200, release_sizes)
    return root
