"""The parity cases: how to run each reference vector through our code.

Every case takes the vector's tensors, its JSON sidecar and the run's :class:`Precision` (device, torso dtype)
and returns the :class:`Check` list. Networks and their inputs go to the run's device; every output is
compared in float32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..engine.packages.checkpoints import load_strict
from ..engine.preprocess import build_slots
from ..engine.samplers import FlowEulerSampler, Guidance, time_schedule
from ..engine.stage1 import slot_noise
from ..nn.dinov2 import DinoVisionTransformer
from ..nn.image_conditioner import ImageConditioner, expand_patch_embedding, imagenet_normalize
from ..nn.registry import build_network
from ..nn.sparse import SparseTensor
from .checks import Check
from .inputs import scene_input
from .precision import Precision

Tensors = dict[str, torch.Tensor]
Case = Callable[[Tensors, dict, Precision], list[Check]]

STATE_PREFIX = "state_dict."


def _state_dict(tensors: Tensors) -> Tensors:
    return {k[len(STATE_PREFIX):]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)}


def _load(module: torch.nn.Module, tensors: Tensors, sidecar: dict, precision: Precision) -> torch.nn.Module:
    """Strictly loaded float32 weights, then on the run's device with its torso dtype."""
    load_strict(module, _state_dict(tensors), sidecar.get("file", sidecar.get("case", "vector")))
    return precision.prepare(module)


def _network(class_name: str) -> Case:
    """Cases whose single output is ``model(*inputs)`` for a registry network."""
    inputs = {"SparseStructureDecoder": ["input.z"]}.get(class_name, ["input.x", "input.t", "input.cond"])

    def run(tensors: Tensors, sidecar: dict, precision: Precision) -> list[Check]:
        model = _load(build_network(class_name, sidecar["constructor_args"]), tensors, sidecar, precision)
        with torch.no_grad():
            out = model(*(precision.to_device(tensors[k]) for k in inputs))
        name = next(k for k in tensors if k.startswith("output."))
        return [precision.network(name, out, tensors[name])]

    return run


def _ss_encoder(tensors: Tensors, sidecar: dict, precision: Precision) -> list[Check]:
    model = _load(build_network("SparseStructureEncoder", sidecar["constructor_args"]), tensors, sidecar, precision)
    x = precision.to_device(tensors["input.x"])
    with torch.no_grad():
        z_raw, mean, logvar = model(x, sample_posterior=False, return_raw=True)
        z = model(x)
    return [precision.network("output.z", z, tensors["output.z"]),
            precision.network("output.mean", mean, tensors["output.mean"]),
            precision.network("output.logvar", logvar, tensors["output.logvar"]),
            precision.network("raw z equals mean", z_raw, tensors["output.mean"])]


def _images(tensors: Tensors, precision: Precision) -> torch.Tensor:
    return precision.to_device(tensors["input.image_u8"]).float() / 255.0


def _dinov2(tensors: Tensors, sidecar: dict, precision: Precision) -> list[Check]:
    model = _load(DinoVisionTransformer(**sidecar["constructor_args"]), tensors, sidecar, precision)
    with torch.no_grad():
        prenorm = model.forward_prenorm(imagenet_normalize(_images(tensors, precision)))
    tokens = torch.nn.functional.layer_norm(prenorm, prenorm.shape[-1:])
    return [precision.network("output.x_prenorm", prenorm, tensors["output.x_prenorm"]),
            precision.network("output.patchtokens", tokens, tensors["output.patchtokens"])]


def _image_conditioner(tensors: Tensors, sidecar: dict, precision: Precision) -> list[Check]:
    args = sidecar["constructor_args"]
    model = ImageConditioner(image_cond_model="dinov2_vitl14_reg", cond_in_channels=args["cond_in_channels"],
                             use_fp16=args.get("use_fp16", False),
                             image_cond_model_args=sidecar.get("tiny_dinov2_args"))
    model = _load(model, tensors, sidecar, precision)
    with torch.no_grad():
        tokens = model(_images(tensors, precision))
    checks = [precision.network("output.patchtokens", tokens, tensors["output.patchtokens"])]
    expanded = tensors.get("output.expand_check.weight9_out")
    if expanded is not None:
        rgb_kernel = expanded[:, :3]
        checks.append(Check("output.expand_check.weight9_out",
                            expand_patch_embedding(rgb_kernel, expanded.shape[1]), expanded))
    return checks


def _sampler(class_name: str) -> Case:
    """Guidance-interval (and, when stored, always-on CFG) Euler sampling of the case's model."""

    def run(tensors: Tensors, sidecar: dict, precision: Precision) -> list[Check]:
        model = _load(build_network(class_name, sidecar["constructor_args"]), tensors, sidecar, precision)
        params = sidecar["sample_params"]
        sampler = FlowEulerSampler(sidecar.get("sampler_args", {}).get("sigma_min", 1e-5))
        checks = [Check("input.t_seq", torch.tensor(time_schedule(params["steps"], params["rescale_t"]),
                                                     dtype=torch.float64), tensors["input.t_seq"], atol=1e-12)]
        variants = {"guidance_interval": tuple(params["cfg_interval"]), "cfg": (0.0, 1.0)}
        for variant, interval in variants.items():
            if f"output.{variant}.samples" not in tensors:
                continue
            noise, cond, neg_cond = (precision.to_device(tensors[f"input.{k}"]) for k in ("noise", "cond", "neg_cond"))
            result = sampler.sample(model, noise, cond, neg_cond, steps=params["steps"], rescale_t=params["rescale_t"],
                                    guidance=Guidance(params["cfg_strength"], interval), return_trajectory=True)
            produced = {"samples": result.samples, "pred_x_t": torch.stack(result.pred_x_t),
                        "pred_x_0": torch.stack(result.pred_x_0)}
            for what, value in produced.items():
                key = f"output.{variant}.{what}"
                if key in tensors:
                    checks.append(precision.sampler(key, value, tensors[key]))
        seed = sidecar.get("seeds", {}).get("noise_seed")
        if seed is not None:
            noise = tensors["input.noise"]
            ours = slot_noise(seed, noise.shape[1], noise.shape[2], noise.shape[-1])
            checks.append(Check("input.noise (seeded draw)", ours, noise[0]))
        return checks

    return run


def _preprocess(tensors: Tensors, sidecar: dict, precision: Precision) -> list[Check]:
    """Slot images at the README's tolerances: 1e-5 on the stored pixels, 1e-3 on float64 row/column sums
    (NumPy on the CPU whatever the run's device and dtype). The inputs are decoded as uploads are
    (:mod:`.inputs`), in whatever encoding the vector stores them."""
    scene = scene_input(tensors)
    slots = build_slots(scene, sidecar.get("exp_setting", "global local"))
    checks = [Check("output.label_ids", np.array(slots.label_ids, dtype=np.int32), tensors["output.label_ids"])]
    for i in range(len(slots.label_ids)):
        full = slots.slots(i)
        prefix = f"output.instance{i}."
        checks += [
            Check(prefix + "crop_boxes", np.array(slots.crop_boxes(i)), tensors[prefix + "crop_boxes"], atol=0, rtol=0),
            Check(prefix + "cond_sub4", full[:, :, ::4, ::4], tensors[prefix + "cond_sub4"], atol=1e-5, rtol=0),
            Check(prefix + "row_sums", full.astype(np.float64).sum(-1), tensors[prefix + "row_sums"],
                  atol=1e-3, rtol=0),
            Check(prefix + "col_sums", full.astype(np.float64).sum(-2), tensors[prefix + "col_sums"],
                  atol=1e-3, rtol=0),
        ]
    return checks


def _sparse_input(tensors: Tensors, precision: Precision) -> SparseTensor:
    return SparseTensor(precision.to_device(tensors["input.feats"]), precision.to_device(tensors["input.coords"]))


def _slat_flow(tensors: Tensors, sidecar: dict, precision: Precision) -> list[Check]:
    model = _load(build_network("SLatFlowModel", sidecar["constructor_args"]), tensors, sidecar, precision)
    with torch.no_grad():
        out = model(_sparse_input(tensors, precision), precision.to_device(tensors["input.t"]),
                    precision.to_device(tensors["input.cond"]))
    return [precision.network("output.feats", out.feats, tensors["output.feats"]),
            Check("output.coords", out.coords, tensors["output.coords"])]


def _slat_dec_mesh(tensors: Tensors, sidecar: dict, precision: Precision) -> list[Check]:
    """The raw head, then FlexiCubes on the reference's own head output for both grid variants
    (TRELLIS res x4, I-Scene res x5): mesh topology hinges on SDF signs, so extraction is compared on
    identical inputs (the parity README's advice); extraction is float32 work whatever the run's dtype."""
    from ..geometry.flexicubes import extract_mesh

    model = _load(build_network("SLatMeshDecoder", sidecar["constructor_args"]), tensors, sidecar, precision)
    with torch.no_grad():
        out = model(_sparse_input(tensors, precision))
    checks = [precision.network("output.raw_feats", out.feats, tensors["output.raw_feats"]),
              Check("output.raw_coords", out.coords, tensors["output.raw_coords"])]
    head = model.head_resolution
    coords, feats = (precision.to_device(tensors[f"output.raw_{k}"]) for k in ("coords", "feats"))
    for variant, res in (("trellis", head), ("iscene", head * 5 // 4)):
        mesh = extract_mesh(coords[:, 1:], feats, res)
        prefix = f"output.{variant}."
        checks += [Check(prefix + "faces", mesh.faces.int(), tensors[prefix + "faces"]),
                   Check(prefix + "vertices", mesh.vertices, tensors[prefix + "vertices"]),
                   Check(prefix + "vertex_attrs", mesh.vertex_attrs, tensors[prefix + "vertex_attrs"])]
    return checks


def _slat_dec_gs(tensors: Tensors, sidecar: dict, precision: Precision) -> list[Check]:
    model = _load(build_network("SLatGaussianDecoder", sidecar["constructor_args"]), tensors, sidecar, precision)
    with torch.no_grad():
        out = model(_sparse_input(tensors, precision))
    checks = [precision.network("output.raw_feats", out.feats, tensors["output.raw_feats"])]
    names = {"_xyz": "raw_xyz", "_features_dc": "raw_features_dc", "_scaling": "raw_scaling",
             "_rotation": "raw_rotation", "_opacity": "raw_opacity", "get_xyz": "xyz", "get_scaling": "scaling",
             "get_rotation": "rotation", "get_opacity": "opacity"}
    for i, gaussians in enumerate(model.to_gaussians(out)):
        for ref_name, ours in names.items():
            key = f"output.gaussian.{i}.{ref_name}"
            checks.append(precision.network(key, getattr(gaussians, ours), tensors[key]))
    return checks


CASES: dict[str, Case] = {
    "dinov2": _dinov2,
    "imgcond9": _image_conditioner,
    "ss_flow": _network("SparseStructureFlowModel"),
    "ss_flow_p2": _network("SparseStructureFlowModel"),
    "ss_sc_flow": _network("SparseStructureSceneContextFlowModel"),
    "ss_sc_flow_global": _network("SparseStructureSceneContextFlowModel"),
    "ss_decoder": _network("SparseStructureDecoder"),
    "ss_encoder": _ss_encoder,
    "sampler": _sampler("SparseStructureFlowModel"),
    "sampler_sc": _sampler("SparseStructureSceneContextFlowModel"),
    "sampler_sc_global": _sampler("SparseStructureSceneContextFlowModel"),
    "preprocess": _preprocess,
    "slat_flow": _slat_flow,
    "slat_dec_mesh": _slat_dec_mesh,
    "slat_dec_gs": _slat_dec_gs,
}
