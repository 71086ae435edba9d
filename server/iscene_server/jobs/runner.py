"""What each job kind runs: the engine, writing into the job's folder.

* ``generate``: the whole scene from the uploaded image and label map.
* ``regenerate``: a child of a finished job; the chosen instances get new seeds, in the parent's frame and with
  the parent's scene seed; every other instance's files are copied from the parent byte for byte.
* ``refine``: a child of a finished job, re-generated coherently with the artist's edits
  (:mod:`iscene_server.engine.refine.scene`); locked and unchanged instances are copied byte for byte.
* ``build``: a child of a finished layout job (``"until": "layout"``): stage 2 and the meshes of the parent's
  layout, without stage 1 (the same files a full generate with that seed writes).
* ``variants``: a child of a finished mesh scene: K candidates of one instance (``instance_<label>_v<k>.glb``),
  batched through stage 1 and stage 2 (:mod:`iscene_server.engine.variants`); the parent's files are copied.
* Every scene job publishes as it goes (:mod:`.publishing`): its layout once stage 1 is done, each instance's
  files once that instance is final; a child of a layout job (regenerate, refine) is a layout itself.
* ``segment``: SAM on the uploaded image with the job's prompts (:mod:`iscene_server.segment`): ``labels.png``
  (a palette label map) and ``segments.json``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .. import segment
from ..engine.eta import DEFAULT_STEPS, JobSize
from ..engine.listener import ResultListener
from ..engine.pipeline import DEFAULT_TEXTURE_SIZE, TEXTURES, GenerationRequest, InstanceResult, ScenePipeline
from ..engine.preprocess import decode_label_map, load_scene, open_image
from ..engine.progress import ProgressTracker
from ..engine.refine.context import ContextObject, context_from_npz, damaged_context, manifest_entries
from ..engine.refine.scene import ParentScene, Refiner, check_edit
from ..engine.results import SceneWriter, file_digest, is_layout, read_layout, read_manifest
from ..engine.seeds import DEFAULT_SEED
from ..engine.variants import generate_variants
from ..errors import InputError
from .publishing import Publisher, PublishingListener
from .store import SCENE_INPUTS

DETAIL_FACES = {"low": 15_000, "medium": 50_000, "high": 200_000}
LABELS_PNG, SEGMENTS_JSON = "labels.png", "segments.json"


CHOICES = {"detail": tuple(DETAIL_FACES), "mesh_grid": ("iscene", "trellis"), "until": ("meshes", "layout"),
           "texture": TEXTURES}
FORMATS = ("mesh", "gaussian")
NUMBERS = ("seed", "steps", "cfg", "slat_steps", "slat_cfg", "target_faces", "min_floater", "texture_size")
PARENT_KINDS = {"regenerate": ("labels", "seeds", "parent_params"), "variants": ("label", "seeds", "parent_params"),
                "refine": ("transforms", "locked", "strength", "seed", "parent_params"), "build": ("parent_params",)}


def damaged_params(problem: str) -> InputError:
    return InputError(f"this job's stored parameters are damaged: {problem}",
                      "submit the job again (its record was edited or written by another version)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_scene_params(params) -> None:
    """The scene parameters a job stored (what :func:`request_from_params` reads), else :class:`InputError`."""
    if not isinstance(params, dict):
        raise damaged_params("they are not a JSON object")
    for name, allowed in CHOICES.items():
        if name in params and params[name] not in allowed:
            raise damaged_params(f"{name} {params[name]!r} is not one of {', '.join(allowed)}")
    formats = params.get("formats", ["mesh"])
    if not isinstance(formats, list) or not formats or any(f not in FORMATS for f in formats):
        raise damaged_params(f"formats {formats!r} is not a list of {', '.join(FORMATS)}")
    for name in NUMBERS:
        if params.get(name) is not None and not _is_number(params[name]):
            raise damaged_params(f"{name} {params[name]!r} is not a number")
    if params.get("vertex_colors") not in (None, True, False) or type(params.get("vertex_colors")) is int:
        raise damaged_params(f"vertex_colors {params['vertex_colors']!r} is not true, false or null")
    labels = params.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, int) for x in labels)):
        raise damaged_params(f"labels {labels!r} is not a list of label ids")


def check_stored_params(kind: str, params) -> None:
    """What a job stored is what its kind reads (the API checked it at submit; a record edited since, or a
    re-queued job of another version, may not be), else :class:`InputError`."""
    if kind in PARENT_KINDS:
        if not isinstance(params, dict):
            raise damaged_params("they are not a JSON object")
        missing = [name for name in PARENT_KINDS[kind] if name not in params]
        if missing:
            raise damaged_params(f"{', '.join(missing)} missing")
        check_scene_params(params["parent_params"])
        if kind == "regenerate":
            check_scene_params({"labels": params["labels"]})
            if params["seeds"] is not None and not isinstance(params["seeds"], dict):
                raise damaged_params("seeds is not an object")
        elif kind == "variants":
            if type(params["label"]) is not int or not isinstance(params["seeds"], list):
                raise damaged_params("label or seeds have the wrong type")
        elif kind == "refine" and (not isinstance(params["transforms"], dict) or not _is_number(params["strength"])):
            raise damaged_params("transforms or strength have the wrong type")
        elif kind == "refine":
            check_context_params(params.get("context", []))
    elif kind == "generate":
        check_scene_params(params)
    elif not isinstance(params, dict):
        raise damaged_params("they are not a JSON object")


def check_context_params(context) -> None:
    """The ``context`` a refine job stored: a list of ``{name, faces, voxels, clipped}`` (older jobs have none)."""
    fields = {"name": str, "faces": int, "voxels": int, "clipped": bool}
    if not isinstance(context, list) or not all(
            isinstance(entry, dict) and all(type(entry.get(key)) is kind for key, kind in fields.items())
            for entry in context):
        raise damaged_params("context is not a list of {name, faces, voxels, clipped}")


def scene_params(kind: str, params: dict) -> dict:
    """The scene parameters (seed, steps, detail, ...) a scene job of ``kind`` ran with: a generate job's own, a
    child's those it inherited (so a grandchild keeps them too)."""
    return params if kind == "generate" else params["parent_params"]


def request_from_params(params: dict, **overrides) -> GenerationRequest:
    """The engine request for a job's stored API parameters."""
    target = params.get("target_faces") or DETAIL_FACES[params.get("detail", "medium")]
    fields = {"seed": params.get("seed", DEFAULT_SEED), "labels": params.get("labels"), "steps": params.get("steps"),
              "cfg_strength": params.get("cfg"), "slat_steps": params.get("slat_steps"),
              "slat_cfg_strength": params.get("slat_cfg"), "formats": tuple(params.get("formats", ["mesh"])),
              "target_faces": target, "min_floater_fraction": params.get("min_floater", 0.02),
              "mesh_grid": params.get("mesh_grid", "iscene"), "texture": params.get("texture", "baked"),
              "texture_size": params.get("texture_size") or DEFAULT_TEXTURE_SIZE,
              "vertex_colors": params.get("vertex_colors")}
    return GenerationRequest(**{**fields, **overrides})


def scene_header(pipeline: ScenePipeline, inputs: dict[str, bytes]) -> dict:
    return {"models": pipeline.package.model_ids(), "device": str(pipeline.device),
            "dtype": str(pipeline.models.dtype).removeprefix("torch."),
            "inputs": {"digests": {name: file_digest(data) for name, data in inputs.items() if name in SCENE_INPUTS}}}


def copy_outputs(parent: Path, child: Path, check: Callable[[], None] | None = None) -> None:
    """Every output file of ``parent`` into ``child`` (inputs and the job record stay their own); ``check`` is
    called before each file (it raises to stop)."""
    for path in parent.iterdir():
        if path.is_file() and path.name != "job.json" and not path.name.endswith(".partial"):
            if check is not None:
                check()
            shutil.copy2(path, child / path.name)


def export(tracker: ProgressTracker, write: Callable[[], dict]) -> dict:
    """The job's last stage: ``write()`` the result files (a writer made with ``check=tracker.check_cancelled``
    stops between files); then the job is done."""
    tracker.begin("export")
    manifest = write()
    tracker.finish()
    return manifest


def publishing(writer: SceneWriter, publisher: Publisher | None) -> ResultListener | None:
    """What writes and announces a scene job's results as they come (nothing without a publisher)."""
    return None if publisher is None else PublishingListener(writer, publisher)


def export_layout(tracker: ProgressTracker, publisher: Publisher | None, write: Callable[[], dict]) -> dict:
    """A layout job's last stage: ``write()`` the layout as its final scene, then publish the ``layout`` event."""
    def write_and_publish() -> dict:
        manifest = write()
        if publisher is not None:
            publisher.event("layout")
        return manifest
    return export(tracker, write_and_publish)


def run_generate(pipeline: ScenePipeline, folder: Path, params: dict, inputs: dict[str, bytes],
                 tracker: ProgressTracker, publisher: Publisher | None = None) -> dict:
    """``params["until"] == "layout"``: stage 1 and the camera only (a layout job), else the whole scene."""
    scene = load_scene(inputs["image"], inputs["labels"])
    request = request_from_params(params)
    writer = SceneWriter(folder, scene_header(pipeline, inputs), check=tracker.check_cancelled)
    if params.get("until") == "layout":
        first, camera = pipeline.layout(scene, request, tracker)
        return export_layout(tracker, publisher, lambda: writer.write_stage1(first, camera))
    result = pipeline.generate(scene, request, tracker, publishing(writer, publisher))
    return export(tracker, lambda: writer.write_scene(result))


def run_regenerate(pipeline: ScenePipeline, folder: Path, parent_folder: Path, params: dict,
                   inputs: dict[str, bytes], tracker: ProgressTracker, publisher: Publisher | None = None) -> dict:
    """New seeds for some instances; the child of a layout is a layout (stage 1 only)."""
    parent = read_manifest(parent_folder)
    copy_outputs(parent_folder, folder, tracker.check_cancelled)
    scene = load_scene(inputs["image"], inputs["labels"])
    request = request_from_params(params["parent_params"], labels=params["labels"], seeds=params["seeds"],
                                  seed=parent["scene_seed"], scene_box=tuple(parent["frame"]["crop_box"]))
    writer = SceneWriter(folder, scene_header(pipeline, inputs), parent, check=tracker.check_cancelled)
    if is_layout(parent):
        first, _ = pipeline.layout(scene, request, tracker)
        return export_layout(tracker, publisher, lambda: writer.write_stage1(first, keep_scene_slot=True))
    result = pipeline.generate(scene, request, tracker, publishing(writer, publisher))
    return export(tracker, lambda: writer.write_scene(result, keep_scene_slot=True))


def run_build(pipeline: ScenePipeline, folder: Path, parent_folder: Path, params: dict, inputs: dict[str, bytes],
              tracker: ProgressTracker, publisher: Publisher | None = None) -> dict:
    """The meshes of a layout job's scene: its occupancies and seeds through stage 2, in its frame with its
    camera; the layout (the parent's, copied) is published at once."""
    parent = read_manifest(parent_folder)
    if not is_layout(parent):
        raise InputError("the parent scene of this build job has meshes already", "use regenerate on it")
    copy_outputs(parent_folder, folder, tracker.check_cancelled)
    scene = load_scene(inputs["image"], inputs["labels"])
    request = request_from_params(params["parent_params"], seed=parent["scene_seed"],
                                  scene_box=tuple(parent["frame"]["crop_box"]))
    writer = SceneWriter(folder, scene_header(pipeline, inputs), parent, check=tracker.check_cancelled)
    result = pipeline.build(scene, read_layout(parent_folder, parent), parent["sampler"]["stage1"], request, tracker,
                            publishing(writer, publisher))
    return export(tracker, lambda: writer.write_scene(result, keep_scene_slot=True))


def refine_context(params: dict, stored: bytes | None) -> list[ContextObject]:
    """The context objects refine job ``params`` recorded, from its ``context`` input ``stored``; a missing or
    unreadable input, or one holding other objects than the record says, is the damaged-input error."""
    recorded = [entry["name"] for entry in params.get("context", [])]
    if not recorded:
        return []
    objects = context_from_npz(stored) if stored is not None else None
    if objects is None or [obj.name for obj in objects] != recorded:
        raise damaged_context()
    return objects


def refine_edit(parent_folder: Path, params: dict, context: Sequence[ContextObject] = ()):
    """The parent scene and the validated edit of refine job ``params`` (labels arrive as JSON strings), with its
    ``context`` objects (:func:`refine_context`)."""
    parent = ParentScene(parent_folder, read_manifest(parent_folder))
    transforms = {int(label): matrix for label, matrix in params["transforms"].items()}
    return parent, check_edit(parent, transforms, params["locked"], params["strength"], params["seed"], context)


def refine_notes(edit, plan) -> dict:
    """What a refine did, for its manifest: the edit, and the context objects it used (``[]`` when none)."""
    return {"context": manifest_entries(edit.context, plan.context_pixels),
            "refine": {"strength": edit.strength, "seed": edit.seed,
                       "locked": sorted(edit.locked), "resampled": plan.resample, "moved_only": plan.rebuild_only,
                       "hidden": plan.hidden,
                       "transforms": {str(k): v.tolist() for k, v in sorted(edit.transforms.items())}}}


def run_refine(pipeline: ScenePipeline, folder: Path, parent_folder: Path, params: dict, inputs: dict[str, bytes],
               tracker: ProgressTracker, publisher: Publisher | None = None) -> dict:
    """The refine of a layout is a layout: the moved occupancies, no re-render, no stage 1, no meshes."""
    parent, edit = refine_edit(parent_folder, params, refine_context(params, inputs.get("context")))
    copy_outputs(parent_folder, folder, tracker.check_cancelled)
    original = load_scene(inputs["image"], inputs["labels"])
    writer = SceneWriter(folder, scene_header(pipeline, inputs), parent.manifest, check=tracker.check_cancelled)
    if is_layout(parent.manifest):
        first, plan = Refiner(pipeline).layout(parent, original, edit, tracker)
        notes = refine_notes(edit, plan)
        return export_layout(tracker, publisher,
                             lambda: writer.write_stage1(first, keep_scene_slot=True, notes=notes))
    request = request_from_params(params["parent_params"], scene_box=parent.frame)
    result, plan = Refiner(pipeline).run(parent, original, edit, request, tracker, publishing(writer, publisher))
    notes = refine_notes(edit, plan)
    keep_scene_slot = result.scene_latent is None
    return export(tracker, lambda: writer.write_scene(result, keep_scene_slot=keep_scene_slot, notes=notes))


def run_variants(pipeline: ScenePipeline, folder: Path, parent_folder: Path, params: dict, inputs: dict[str, bytes],
                 tracker: ProgressTracker, publisher: Publisher | None = None) -> dict:
    """Candidates of one instance of the parent scene, one per seed, in the parent's frame with its scene seed;
    each candidate's files are written (and a ``variant`` event published) as soon as it is final. The parent's
    files are copied (but for the candidates of a variants parent), so the folder holds a whole scene plus the
    candidates."""
    parent = read_manifest(parent_folder)
    copy_outputs(parent_folder, folder, tracker.check_cancelled)
    for earlier in parent.get("variants", {}).get("candidates", []):
        for name in (earlier.get("file"), earlier.get("ply")):
            if name:
                (folder / name).unlink(missing_ok=True)
    scene = load_scene(inputs["image"], inputs["labels"])
    request = request_from_params(params["parent_params"], seed=parent["scene_seed"],
                                  scene_box=tuple(parent["frame"]["crop_box"]))
    writer = SceneWriter(folder, scene_header(pipeline, inputs), parent, check=tracker.check_cancelled)
    candidates = []

    def publish(index: int, result: InstanceResult) -> None:
        candidates.append(writer.write_candidate(index, result))
        if publisher is not None:
            publisher.event("variant", label=result.label, index=index)

    result = generate_variants(pipeline, scene, params["label"], params["seeds"], request, tracker, publish)
    return export(tracker, lambda: writer.write_variants(result.label, candidates, result.settings, result.timings))


def run_segment(segmenter, folder: Path, params: dict, inputs: dict[str, bytes], tracker: ProgressTracker) -> dict:
    """``params`` are the schema-checked prompts (``SegmentPrompts``); ``segmenter`` a ``SamSegmenter``."""
    from ..segment.pipeline import (
        segment_to_files,  # needs the optional [segment] dependencies
    )

    return segment_to_files(segmenter, inputs["image"], params, folder / LABELS_PNG, folder / SEGMENTS_JSON, tracker)


def default_steps(pipeline: ScenePipeline | None) -> tuple[int, int]:
    """The package's stage-1 and stage-2 sampling steps (the released samplers' when it is not loaded yet)."""
    if pipeline is None:
        return DEFAULT_STEPS, DEFAULT_STEPS
    return (pipeline.package.sampler("sparse_structure_sampler").steps, pipeline.package.sampler("slat_sampler").steps)


def label_count(labels_png: bytes) -> int:
    """The number of objects in an uploaded label map."""
    ids = decode_label_map(open_image(labels_png, what="label map"))
    return int(np.count_nonzero(np.unique(ids)))


def cost_kind(kind: str, params: dict) -> str:
    """Whose stage costs a job runs at (:class:`~iscene_server.engine.eta.StageCosts`): a layout job's own
    (``"layout"``: its camera solve is a stage of its own, where a full generate's overlaps stage 2), else its
    kind's."""
    return "layout" if kind == "generate" and isinstance(params, dict) and params.get("until") == "layout" else kind


def typical_units(kind: str) -> dict[str, float]:
    """The units of work of a typical job of ``kind`` (for a job whose inputs cannot be read). A segment job's
    stages cost about the same whatever it is asked: its units are its plan's relative costs."""
    return dict(segment.SEGMENT_PLAN) if kind == "segment" else JobSize(kind).units()


def job_units(kind: str, params: dict, inputs: dict[str, bytes], parent: dict | None,
              steps: tuple[int, int]) -> dict[str, float]:
    """The units of work per stage (:mod:`iscene_server.engine.eta`) of a job, from what it asks for; ``parent``:
    the parent scene's manifest (regenerate, refine); ``steps``: the package's default steps per stage."""
    if kind == "segment":
        return typical_units(kind)
    asked = scene_params(kind, params)
    size = {"kind": kind, "stage1_steps": asked.get("steps") or steps[0],
            "stage2_steps": asked.get("slat_steps") or steps[1], "formats": tuple(asked.get("formats", ["mesh"]))}
    if kind == "generate":
        count = len(params["labels"]) if params.get("labels") else label_count(inputs["labels"])
        return JobSize(instances=count, meshes=params.get("until") != "layout", **size).units()
    if kind == "build":
        return JobSize(instances=len(parent["instances"]), camera=False, resample=False, **size).units()
    if kind == "variants":
        return JobSize(instances=len(params["seeds"]), camera=False, **size).units()
    meshes = not is_layout(parent)  # the child of a layout is a layout
    if kind == "regenerate":
        return JobSize(instances=len(params["labels"]), camera=False, meshes=meshes, **size).units()
    unlocked = [e for e in parent["instances"] if e["label"] not in set(params["locked"])]
    return JobSize(instances=len(unlocked), camera=False, resample=meshes and params["strength"] > 0, meshes=meshes,
                   **size).units()
