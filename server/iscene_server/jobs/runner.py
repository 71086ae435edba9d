"""What each job kind runs: the engine, writing into the job's folder.

* ``generate``: the whole scene from the uploaded image and label map.
* ``regenerate``: a child of a finished job; the chosen instances get new seeds, in the parent's frame and with
  the parent's scene seed; every other instance's files are copied from the parent byte for byte.
* ``refine``: a child of a finished job, re-generated coherently with the artist's edits
  (:mod:`iscene_server.engine.refine.scene`); locked and unchanged instances are copied byte for byte.
* ``segment``: SAM on the uploaded image with the job's prompts (:mod:`iscene_server.segment`): ``labels.png``
  (a palette label map) and ``segments.json``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..engine.pipeline import GenerationRequest, ScenePipeline
from ..engine.preprocess import load_scene
from ..engine.progress import ProgressTracker
from ..engine.refine.scene import ParentScene, Refiner, check_edit
from ..engine.results import SceneWriter, file_digest, read_manifest

DETAIL_FACES = {"low": 15_000, "medium": 50_000, "high": 200_000}
LABELS_PNG, SEGMENTS_JSON = "labels.png", "segments.json"


def request_from_params(params: dict, **overrides) -> GenerationRequest:
    """The engine request for a job's stored API parameters."""
    target = params.get("target_faces") or DETAIL_FACES[params.get("detail", "medium")]
    fields = dict(seed=params.get("seed", 42), labels=params.get("labels"), steps=params.get("steps"),
                  cfg_strength=params.get("cfg"), slat_steps=params.get("slat_steps"),
                  slat_cfg_strength=params.get("slat_cfg"), formats=tuple(params.get("formats", ["mesh"])),
                  target_faces=target, min_floater_fraction=params.get("min_floater", 0.02),
                  mesh_grid=params.get("mesh_grid", "iscene"))
    fields.update(overrides)
    return GenerationRequest(**fields)


def scene_header(pipeline: ScenePipeline, inputs: dict[str, bytes]) -> dict:
    return {"models": pipeline.package.model_ids(), "device": str(pipeline.device),
            "dtype": str(pipeline.models.dtype).removeprefix("torch."),
            "inputs": {"digests": {name: file_digest(data) for name, data in inputs.items()}}}


def copy_outputs(parent: Path, child: Path) -> None:
    """Every output file of ``parent`` into ``child`` (inputs and the job record stay their own)."""
    for path in parent.iterdir():
        if path.is_file() and path.name != "job.json" and not path.name.endswith(".partial"):
            shutil.copy2(path, child / path.name)


def run_generate(pipeline: ScenePipeline, folder: Path, params: dict, inputs: dict[str, bytes],
                 tracker: ProgressTracker) -> dict:
    scene = load_scene(inputs["image"], inputs["labels"])
    result = pipeline.generate(scene, request_from_params(params), tracker)
    return SceneWriter(folder, scene_header(pipeline, inputs)).write_scene(result)


def run_regenerate(pipeline: ScenePipeline, folder: Path, parent_folder: Path, params: dict,
                   inputs: dict[str, bytes], tracker: ProgressTracker) -> dict:
    parent = read_manifest(parent_folder)
    copy_outputs(parent_folder, folder)
    scene = load_scene(inputs["image"], inputs["labels"])
    request = request_from_params(params["parent_params"], labels=params["labels"], seeds=params["seeds"],
                                  seed=parent["scene_seed"], scene_box=tuple(parent["frame"]["crop_box"]))
    result = pipeline.generate(scene, request, tracker)
    return SceneWriter(folder, scene_header(pipeline, inputs), parent).write_scene(result, keep_scene_slot=True)


def refine_edit(parent_folder: Path, params: dict):
    """The parent scene and the validated edit of refine job ``params`` (labels arrive as JSON strings)."""
    parent = ParentScene(parent_folder, read_manifest(parent_folder))
    transforms = {int(label): matrix for label, matrix in params["transforms"].items()}
    return parent, check_edit(parent, transforms, params["locked"], params["strength"], params["seed"])


def run_refine(pipeline: ScenePipeline, folder: Path, parent_folder: Path, params: dict, inputs: dict[str, bytes],
               tracker: ProgressTracker) -> dict:
    parent, edit = refine_edit(parent_folder, params)
    copy_outputs(parent_folder, folder)
    original = load_scene(inputs["image"], inputs["labels"])
    request = request_from_params(params["parent_params"], scene_box=parent.frame)
    result, plan = Refiner(pipeline).run(parent, original, edit, request, tracker)
    notes = {"refine": {"strength": edit.strength, "seed": edit.seed,
                        "locked": sorted(edit.locked), "resampled": plan.resample, "moved_only": plan.rebuild_only,
                        "hidden": plan.hidden,
                        "transforms": {str(k): v.tolist() for k, v in sorted(edit.transforms.items())}}}
    writer = SceneWriter(folder, scene_header(pipeline, inputs), parent.manifest)
    return writer.write_scene(result, keep_scene_slot=result.scene_latent is None, notes=notes)


def run_segment(segmenter, folder: Path, params: dict, inputs: dict[str, bytes], tracker: ProgressTracker) -> dict:
    """``params`` are the schema-checked prompts (``SegmentPrompts``); ``segmenter`` a ``SamSegmenter``."""
    from ..segment.pipeline import segment_to_files  # needs the optional [segment] dependencies

    return segment_to_files(segmenter, inputs["image"], params, folder / LABELS_PNG, folder / SEGMENTS_JSON, tracker)
