"""Writing pipeline results to disk in documented, tool-friendly formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .pipeline import Stage1Result
from .stage1 import GRID

STAGE1_NPZ = "stage1.npz"
STAGE1_JSON = "stage1.json"


def _bbox(positions: np.ndarray) -> dict:
    if positions.size == 0:
        return {"min": None, "max": None}
    half = 0.5 / GRID
    return {"min": (positions.min(0) - half).round(6).tolist(), "max": (positions.max(0) + half).round(6).tolist()}


def stage1_summary(result: Stage1Result, model_ids: dict, device: str, dtype: str) -> dict:
    slots = result.slots
    return {
        "format": "iscene-stage1/1",
        "models": model_ids,
        "device": device,
        "dtype": dtype,
        "frame": {
            "image_size": list(slots.image_size),
            "crop_box": list(slots.scene_box),
            "grid": GRID,
            "voxel_size": 1.0 / GRID,
            "voxel_centre": "(index + 0.5) / grid - 0.5, per axis x, y, z (scene frame [-0.5, 0.5]^3, z up)",
        },
        "scene_seed": result.structure.scene_seed,
        "sampler": result.settings,
        "instances": [
            {"label": inst.label, "seed": inst.seed, "voxels": int(inst.coords.shape[0]),
             "coords": f"coords_{inst.label}", "latent": f"latent_{inst.label}",
             "bbox": _bbox(inst.positions())}
            for inst in result.structure.instances
        ],
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
    }


def write_stage1(out_dir: str | Path, result: Stage1Result, summary: dict) -> list[Path]:
    """``stage1.npz`` (``coords_<label>`` int16 [M, 3], ``latent_<label>`` and ``scene_latent`` float32
    [8, 16, 16, 16]) and ``stage1.json`` (the summary)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"scene_latent": result.structure.scene_latent.numpy()}
    for inst in result.structure.instances:
        arrays[f"coords_{inst.label}"] = inst.coords
        arrays[f"latent_{inst.label}"] = inst.latent.numpy()
    npz, js = out / STAGE1_NPZ, out / STAGE1_JSON
    with open(npz.with_suffix(".tmp"), "wb") as f:
        np.savez_compressed(f, **arrays)
    npz.with_suffix(".tmp").replace(npz)
    js.write_text(json.dumps(summary, indent=2))
    return [npz, js]
