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

from ...nn.precision import TorsoPrecision
from ...nn.registry import build_network
from ...nn.ss_decoder import SparseStructureDecoder
from .layouts import ISCENE_CONFIG_JSON, PIPELINE_JSON, SS_ENCODER_STEM

BASE_DIR = "trellis-image-tiny"
SEED = 20260101
OCCUPANCY_FRACTION = 0.006  # of the 64^3 grid; keeps tiny stage-2 work small on a CPU

RELEASED_SLAT_NORMALIZATION = {
    "mean": [-2.1687545776367188, -0.004347046371549368, -0.13352349400520325, -0.08418072760105133,
             -0.5271206498146057, 0.7238689064979553, -1.1414450407028198, 1.2039363384246826],
    "std": [2.377650737762451, 2.386378288269043, 2.124418020248413, 2.1748552322387695,
            2.663944721221924, 2.371192216873169, 2.6217446327209473, 2.684523105621338],
}
RELEASED_SAMPLER = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                    "params": {"steps": 25, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}

TINY_DINOV2 = {"embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_SS_FLOW = {"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 64, "cond_channels": 32,
                "num_blocks": 4, "num_heads": 2, "mlp_ratio": 4, "patch_size": 2, "pe_mode": "ape",
                "qk_rms_norm": True, "use_fp16": True}
TINY_DENOISER = {**TINY_SS_FLOW, "scene_context_attn_num": 2, "learning_pattern": "full-finetune",
                 "exp_setting": "global"}
TINY_SS_DECODER = {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 1, "channels": [32, 16, 8],
                   "num_res_blocks_middle": 1, "use_fp16": True}
TINY_SS_ENCODER = {"in_channels": 1, "latent_channels": 8, "num_res_blocks": 1, "channels": [8, 16, 32],
                   "num_res_blocks_middle": 1, "use_fp16": True}
TINY_CONDITIONER = {"image_cond_model": "dinov2_vitl14_reg", "cond_in_channels": 3, "use_fp16": False,
                    "image_cond_model_args": TINY_DINOV2}

# role in pipeline.json -> (checkpoint stem, class name, args)
TRELLIS_NETWORKS = {
    "sparse_structure_decoder": ("ckpts/ss_dec_conv3d_16l8_fp16", "SparseStructureDecoder", TINY_SS_DECODER),
    "sparse_structure_flow_model": ("ckpts/ss_flow_img_dit_L_16l8_fp16", "SparseStructureFlowModel", TINY_SS_FLOW),
}
EXTRA_TRELLIS_NETWORKS = {
    "sparse_structure_encoder": (SS_ENCODER_STEM, "SparseStructureEncoder", TINY_SS_ENCODER),
}


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
    latents = torch.randn(4, decoder.input_layer.in_channels, 16, 16, 16, generator=generator)
    with torch.no_grad():
        logits = decoder(latents).flatten()
        threshold = torch.quantile(logits[torch.randperm(logits.numel(), generator=generator)[:2 ** 20]],
                                   1.0 - fraction)
        decoder.out_layer[2].bias -= threshold


def _stored_state(net: nn.Module, use_fp16: bool) -> dict[str, torch.Tensor]:
    """The state dict in the release's storage dtypes (half-precision torso when ``use_fp16``)."""
    if use_fp16 and isinstance(net, TorsoPrecision):
        net.set_torso_dtype(torch.float16)
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    if isinstance(net, TorsoPrecision):
        net.set_torso_dtype(torch.float32)
    return state


def _write_trellis_network(root: Path, stem: str, name: str, args: dict, seed: int) -> None:
    net = _seeded(name, args, seed)
    if isinstance(net, SparseStructureDecoder):
        _calibrate_occupancy(net, OCCUPANCY_FRACTION, seed)
    (root / stem).parent.mkdir(parents=True, exist_ok=True)
    (root / f"{stem}.json").write_text(json.dumps({"name": name, "args": args}, indent=4))
    save_file(_stored_state(net, args.get("use_fp16", False)), str(root / f"{stem}.safetensors"))


def write_tiny_package(directory: str | Path, seed: int = SEED) -> Path:
    """Write the tiny package into ``directory`` (created if needed) and return its path."""
    root = Path(directory)
    base = root / BASE_DIR
    networks = {**TRELLIS_NETWORKS, **EXTRA_TRELLIS_NETWORKS}
    for offset, (stem, name, args) in enumerate(networks.values()):
        _write_trellis_network(base, stem, name, args, seed + offset)
    pipeline = {
        "name": "TrellisImageTo3DPipeline",
        "args": {
            "models": {role: stem for role, (stem, _, _) in TRELLIS_NETWORKS.items()},
            "sparse_structure_sampler": RELEASED_SAMPLER,
            "slat_sampler": RELEASED_SAMPLER,
            "slat_normalization": RELEASED_SLAT_NORMALIZATION,
            "image_cond_model": "dinov2_vitl14_reg",
        },
    }
    (base / PIPELINE_JSON).write_text(json.dumps(pipeline, indent=4))

    (root / "ckpts").mkdir(parents=True, exist_ok=True)
    denoiser = _seeded("SparseStructureSceneContextFlowModel", TINY_DENOISER, seed + 100)
    torch.save(_stored_state(denoiser, True), root / "ckpts" / "iscene_denoiser.pt")
    conditioner = _seeded("ImageConditioner", TINY_CONDITIONER, seed + 101)
    torch.save(_stored_state(conditioner, False), root / "ckpts" / "iscene_image_conditioner.pt")
    config = {
        "models": {
            "denoiser": {"name": "SparseStructureSceneContextFlowModel", "args": TINY_DENOISER},
            "img_conditioner": {"name": "ImageConditioner", "args": TINY_CONDITIONER},
        },
        "dataset": {"args": {"exp_setting": TINY_DENOISER["exp_setting"]}},
    }
    (root / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / ISCENE_CONFIG_JSON).write_text(json.dumps({
        "model_name": "IScene-tiny",
        "base_model_id": BASE_DIR,
        "config_file": "config.yml",
        "denoiser_checkpoint": "ckpts/iscene_denoiser.pt",
        "image_conditioner_checkpoint": "ckpts/iscene_image_conditioner.pt",
    }, indent=4))
    return root
