"""A scene on disk: ``scene.json`` (the manifest), ``structure.npz`` (stage-1 voxels and latents),
``proxy_<label>.glb`` (a light placeholder from the occupancy) and ``instance_<label>.glb`` per instance,
``scene.glb`` (all instances) and optional ``instance_<label>.ply``.

Written progressively by a job: :meth:`SceneWriter.write_layout` once stage 1 is done (the proxies and a
*partial* manifest, ``"partial": true``), :meth:`SceneWriter.write_finished` as each instance is final (its files,
the partial manifest again), then the final manifest as always. Every file is written atomically, so a file
that exists is complete.

Regenerating a subset writes only the regenerated instances' files and the scene-wide files; every other
instance's files are left untouched (so they stay byte-identical), and its manifest entry is carried over.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_atomic
from ..errors import InputError
from ..geometry.glb_writer import write_instance_glb, write_scene_glb
from ..geometry.gltf import instance_name
from ..geometry.ply import write_gaussian_ply
from ..geometry.postprocess import ColoredMesh, bounds_and_origin
from ..geometry.proxy import proxy_mesh
from ..geometry.voxels import GRID
from .camera.solve import CameraFit
from .pipeline import InstanceResult, SceneResult, Stage1Result
from .stage1 import InstanceStructure, SceneStructure

FORMAT = "iscene-scene/1"
SCENE_JSON = "scene.json"
SCENE_GLB = "scene.glb"
STRUCTURE_NPZ = "structure.npz"


CANDIDATE_FIELDS = ("seed", "file", "vertices", "faces", "bbox", "voxels", "extracted_faces", "texture", "ply")


def texture_entry(mesh: ColoredMesh, vertex_colors: bool) -> dict:
    """How an instance's GLB is coloured: ``{"mode": "baked", "size": texels, "vertex_colors": COLOR_0 kept}`` or
    ``{"mode": "vertex"}``."""
    if not mesh.textured:
        return {"mode": "vertex"}
    return {"mode": "baked", "size": int(mesh.texture.shape[0]), "vertex_colors": bool(vertex_colors)}


def candidate_name(label: int, index: int) -> str:
    """File stem of variant ``index`` (1-based) of instance ``label``."""
    return f"{instance_name(label)}_v{int(index)}"


def proxy_file(label: int) -> str:
    return f"proxy_{label}.glb"


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


def is_layout(manifest: dict) -> bool:
    """Whether a finished scene is a layout only (stage 1, proxies, no meshes yet)."""
    return manifest.get("stage") == "layout" and not manifest.get("partial")


def read_layout(folder: str | Path, manifest: dict) -> SceneStructure:
    """The stage-1 structure of the scene in ``folder`` (its ``structure.npz`` and the manifest's seeds)."""
    with np.load(Path(folder) / STRUCTURE_NPZ) as arrays:
        instances = [InstanceStructure(e["label"], int(e["seed"]), torch.from_numpy(arrays[f"latent_{e['label']}"]),
                                       arrays[f"coords_{e['label']}"]) for e in manifest["instances"]]
        return SceneStructure(int(manifest["scene_seed"]), torch.from_numpy(arrays["scene_latent"]), instances)


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
        self.proxies: dict[int, str | None] = {}  # label -> its proxy file (None: empty occupancy), once written
        self.finished: dict[int, dict] = {}  # label -> manifest entry of an instance written by write_finished
        self.layout: tuple[Stage1Result, CameraFit | None] | None = None  # what write_layout was given

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

    def _write_proxy(self, inst: InstanceStructure) -> None:
        """``proxy_<label>.glb`` from the occupancy, or none (a stale one removed) when it is empty."""
        self._before_file()
        name, mesh = proxy_file(inst.label), proxy_mesh(inst.coords)
        if mesh is None:
            (self.folder / name).unlink(missing_ok=True)
        else:
            write_instance_glb(self.folder / name, mesh, label=inst.label, seed=inst.seed,
                               model_ids=self.header["models"], extras={"proxy": True}, normals=False)
        self.proxies[inst.label] = None if mesh is None else name

    def _write_proxies(self, instances: list[InstanceStructure]) -> None:
        for inst in instances:
            if inst.label not in self.proxies:
                self._write_proxy(inst)

    def _layout_entry(self, inst: InstanceStructure) -> dict:
        """The manifest entry of an instance laid out but not built: its voxels, proxy and origin, no file."""
        bbox = voxel_bounds(inst)
        return {"label": inst.label, "seed": inst.seed, "voxels": len(inst.coords), "bbox": bbox,
                "origin": bbox["origin"], "proxy": self.proxies.get(inst.label), "file": None}

    @staticmethod
    def _with_camera(manifest: dict, camera: CameraFit | None) -> dict:
        """``manifest`` with ``camera`` (a newly solved one; None keeps the parent's)."""
        if camera is not None:
            fit = camera.to_dict()
            manifest.update(camera=fit["camera"], camera_fit=fit["fit"])
        return manifest

    def write_stage1(self, result: Stage1Result, camera: CameraFit | None = None,
                     keep_scene_slot: bool = False, notes: dict | None = None) -> dict:
        """A layout (stage 1 only) as a finished scene: proxies, no meshes, ``"stage": "layout"``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        structure = result.structure
        self._write_structure(None if keep_scene_slot else structure.scene_latent, structure.instances)
        self._write_proxies(structure.instances)
        entries = [self._layout_entry(i) for i in structure.instances]
        manifest = self._manifest(result.slots, structure.scene_seed, entries, {"stage1": result.settings},
                                  result.timings, {"stages": 1, "stage": "layout"})
        self._with_camera(manifest, camera).update(notes or {})
        return self._write_manifest(manifest)

    def write_layout(self, first: Stage1Result, camera: CameraFit | None) -> dict:
        """Once stage 1 (and the camera solve) is done: the proxies and the partial manifest."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_proxies(first.structure.instances)
        self.layout = (first, camera)
        return self._write_partial()

    def write_finished(self, inst: InstanceResult) -> dict:
        """One instance that is final, while the job goes on: its files, then the partial manifest again."""
        self.finished[inst.label] = self._write_instance(inst)
        return self._write_partial()

    def _write_partial(self) -> dict:
        first, camera = self.layout
        entries = [self.finished.get(i.label) or self._layout_entry(i) for i in first.structure.instances]
        manifest = self._manifest(first.slots, first.structure.scene_seed, entries, {"stage1": first.settings},
                                  first.timings, {"partial": True, "stage": "meshes" if self.finished else "layout"})
        return self._write_manifest(self._with_camera(manifest, camera))

    def write_scene(self, result: SceneResult, keep_scene_slot: bool = False, notes: dict | None = None) -> dict:
        """``keep_scene_slot``: a regeneration records its parent's scene latent, not its own recomputation;
        ``notes`` are added to the manifest (e.g. what a refine did)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_structure(None if keep_scene_slot else result.scene_latent,
                              [i.structure for i in result.instances])
        self._write_proxies([i.structure for i in result.instances])
        entries = [self.finished.get(inst.label) or self._write_instance(inst) for inst in result.instances]
        manifest = self._manifest(result.slots, result.scene_seed, entries, result.settings, result.timings,
                                  {"stages": 2, "mesh_frame": result.mesh_frame.describe()})
        self._with_camera(manifest, result.camera).update(notes or {})
        meshes = [self.folder / e["file"] for e in manifest["instances"] if e.get("file")]
        if meshes:
            self._before_file()
            write_scene_glb(self.folder / SCENE_GLB, meshes)
            manifest["files"] = {"scene": SCENE_GLB, "structure": STRUCTURE_NPZ}
        return self._write_manifest(manifest)

    def _write_instance(self, inst: InstanceResult, name: str | None = None) -> dict:
        """``name``: the files' stem (default ``instance_<label>``)."""
        self._before_file()
        structure, name = inst.structure, name or instance_name(inst.label)
        entry = {**self._layout_entry(structure), "vertices": 0, "faces": 0, "extracted_faces": inst.extracted_faces}
        for stale in (f"{name}.glb", f"{name}.ply"):
            (self.folder / stale).unlink(missing_ok=True)
        if inst.mesh is not None:
            write_instance_glb(self.folder / f"{name}.glb", inst.mesh, label=inst.label, seed=structure.seed,
                               model_ids=self.header["models"], vertex_colors=inst.vertex_colors)
            bounds = bounds_and_origin(inst.mesh.vertices)
            entry.update(file=f"{name}.glb", vertices=inst.mesh.vertex_count, faces=inst.mesh.face_count,
                         bbox=bounds.to_dict(), texture=texture_entry(inst.mesh, inst.vertex_colors))
        if inst.gaussians is not None:
            write_gaussian_ply(self.folder / f"{name}.ply", inst.gaussians)
            entry["ply"] = f"{name}.ply"
        return entry

    def write_candidate(self, index: int, inst: InstanceResult) -> dict:
        """Candidate ``index`` (1-based) of a variants job: ``instance_<label>_v<index>.glb`` (and ``.ply``), written
        as a regeneration with its seed writes ``instance_<label>.glb``; returns its manifest entry."""
        entry = self._write_instance(inst, candidate_name(inst.label, index))
        return {"index": index, **{key: entry[key] for key in CANDIDATE_FIELDS if key in entry}}

    def write_variants(self, label: int, candidates: list[dict], settings: dict, timings: dict) -> dict:
        """The manifest of a variants job: its parent's (whose files the job folder holds, copied), plus the
        ``variants`` section listing the ``candidates`` (:meth:`write_candidate`'s entries) and how they were
        sampled."""
        if self.parent is None:
            raise ValueError("a variants manifest extends its parent scene's manifest")
        variants = {"label": int(label), "candidates": sorted(candidates, key=lambda c: c["index"]),
                    "sampler": settings, "timings_s": {k: round(v, 4) for k, v in timings.items()}}
        return self._write_manifest({**self.parent, "variants": variants})
