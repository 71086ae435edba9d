"""A scene on disk: ``scene.json`` (the manifest), ``structure.npz`` (stage-1 voxels and latents),
``instance_<label>.glb`` per instance, ``scene.glb`` (all instances) and optional ``instance_<label>.ply``.

Regenerating a subset writes only the regenerated instances' files and the scene-wide files; every other
instance's files are left untouched (so they stay byte-identical), and its manifest entry is carried over.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..atomic import write_atomic
from ..errors import InputError
from ..geometry.glb_writer import write_instance_glb, write_scene_glb
from ..geometry.gltf import instance_name
from ..geometry.ply import write_gaussian_ply
from ..geometry.postprocess import bounds_and_origin
from ..geometry.voxels import GRID
from .pipeline import InstanceResult, SceneResult, Stage1Result
from .stage1 import InstanceStructure

FORMAT = "iscene-scene/1"
SCENE_JSON = "scene.json"
SCENE_GLB = "scene.glb"
STRUCTURE_NPZ = "structure.npz"


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def voxel_bounds(inst: InstanceStructure) -> dict:
    if inst.coords.size == 0:
        return {"min": None, "max": None, "origin": None}
    lo = inst.coords.min(0) / GRID - 0.5
    hi = (inst.coords.max(0) + 1) / GRID - 0.5
    return {"min": lo.round(6).tolist(), "max": hi.round(6).tolist(),
            "origin": [round(float((lo[0] + hi[0]) / 2), 6), round(float((lo[1] + hi[1]) / 2), 6),
                       round(float(lo[2]), 6)]}


def read_manifest(folder: str | Path) -> dict | None:
    path = Path(folder) / SCENE_JSON
    if not path.is_file():
        return None
    shown = f"{path.parent.name}/{SCENE_JSON}"  # never the absolute path: server responses carry this message
    damaged = "the scene's files are damaged: generate it again (or use a new output folder)"
    try:
        manifest = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{shown} is unreadable ({exc.strerror})", damaged) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{shown} is unreadable ({exc.msg} at line {exc.lineno})", damaged) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{shown} is not a scene written by this server", damaged)
    return manifest


def check_same_inputs(parent: dict, inputs: dict) -> None:
    if parent.get("inputs", {}).get("digests") != inputs["digests"]:
        raise InputError("the output folder holds a scene made from a different image or label map",
                         "regenerate into the folder of that scene's own inputs, or use a new output folder")


class SceneWriter:
    """Writes one generation (full or stage 1 only) into a folder, merging with an earlier scene there.

    ``check`` is called before each file (a job's ``ProgressTracker.check_cancelled``): when it raises, writing
    stops there. The manifest is always written last, so a stopped write never presents its files as a scene.
    """

    def __init__(self, folder: str | Path, header: dict, parent: dict | None = None,
                 check: Callable[[], None] | None = None):
        self.folder = Path(folder)
        self.header = header
        self.parent = parent
        self.check = check

    def _before_file(self) -> None:
        if self.check is not None:
            self.check()

    def _entries(self, new: list[dict]) -> list[dict]:
        replaced = {e["label"] for e in new}
        kept = [e for e in (self.parent or {}).get("instances", []) if e["label"] not in replaced]
        return sorted(kept + new, key=lambda e: e["label"])

    def _write_structure(self, scene_latent, instances: list[InstanceStructure]) -> None:
        """``scene_latent=None`` keeps the scene slot already on disk (a regeneration keeps its parent's)."""
        self._before_file()
        arrays: dict[str, np.ndarray] = {}
        previous = self.folder / STRUCTURE_NPZ
        if self.parent is not None and previous.is_file():
            with np.load(previous) as old:
                arrays.update({k: old[k] for k in old.files})
        if scene_latent is not None or "scene_latent" not in arrays:
            arrays["scene_latent"] = scene_latent.numpy()
        for inst in instances:
            arrays[f"coords_{inst.label}"] = inst.coords
            arrays[f"latent_{inst.label}"] = inst.latent.numpy()
        write_atomic(previous, lambda file: np.savez_compressed(file, **arrays))

    def _write_manifest(self, manifest: dict) -> dict:
        self._before_file()
        write_atomic(self.folder / SCENE_JSON, json.dumps(manifest, indent=2).encode())
        return manifest

    def _manifest(self, slots, scene_seed: int, entries: list[dict], settings: dict, timings: dict,
                  extra: dict) -> dict:
        return {
            "format": FORMAT, **self.header,
            "frame": {"image_size": list(slots.image_size), "crop_box": list(slots.scene_box), "grid": GRID,
                      "voxel_centre": "(index + 0.5) / grid - 0.5 per axis; scene frame [-0.5, 0.5]^3, z up"},
            "scene_seed": scene_seed, "sampler": settings, **extra,
            "instances": self._entries(entries),
            "camera": (self.parent or {}).get("camera"),
            "camera_fit": (self.parent or {}).get("camera_fit"),
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
        }

    def write_stage1(self, result: Stage1Result) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        structure = result.structure
        self._write_structure(structure.scene_latent, structure.instances)
        entries = [{"label": i.label, "seed": i.seed, "voxels": len(i.coords), "bbox": voxel_bounds(i)}
                   for i in structure.instances]
        return self._write_manifest(self._manifest(result.slots, structure.scene_seed, entries,
                                                   {"stage1": result.settings}, result.timings, {"stages": 1}))

    def write_scene(self, result: SceneResult, keep_scene_slot: bool = False, notes: dict | None = None) -> dict:
        """``keep_scene_slot``: a regeneration records its parent's scene latent, not its own recomputation;
        ``notes`` are added to the manifest (e.g. what a refine did)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_structure(None if keep_scene_slot else result.scene_latent,
                              [i.structure for i in result.instances])
        entries = [self._write_instance(inst) for inst in result.instances]
        manifest = self._manifest(result.slots, result.scene_seed, entries, result.settings, result.timings,
                                  {"stages": 2, "mesh_frame": result.mesh_frame.describe()})
        if result.camera is not None:
            fit = result.camera.to_dict()
            manifest.update(camera=fit["camera"], camera_fit=fit["fit"])
        manifest.update(notes or {})
        meshes = [self.folder / e["file"] for e in manifest["instances"] if e.get("file")]
        if meshes:
            self._before_file()
            write_scene_glb(self.folder / SCENE_GLB, meshes)
            manifest["files"] = {"scene": SCENE_GLB, "structure": STRUCTURE_NPZ}
        return self._write_manifest(manifest)

    def _write_instance(self, inst: InstanceResult) -> dict:
        self._before_file()
        structure, name = inst.structure, instance_name(inst.label)
        entry = {"label": inst.label, "seed": structure.seed, "voxels": len(structure.coords),
                 "bbox": voxel_bounds(structure), "file": None, "vertices": 0, "faces": 0,
                 "extracted_faces": inst.extracted_faces}
        for stale in (f"{name}.glb", f"{name}.ply"):
            (self.folder / stale).unlink(missing_ok=True)
        if inst.mesh is not None:
            write_instance_glb(self.folder / f"{name}.glb", inst.mesh, label=inst.label, seed=structure.seed,
                               model_ids=self.header["models"])
            bounds = bounds_and_origin(inst.mesh.vertices)
            entry.update(file=f"{name}.glb", vertices=inst.mesh.vertex_count, faces=inst.mesh.face_count,
                         bbox=bounds.to_dict())
        if inst.gaussians is not None:
            write_gaussian_ply(self.folder / f"{name}.ply", inst.gaussians)
            entry["ply"] = f"{name}.ply"
        return entry
