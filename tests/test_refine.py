"""Refine: the artist's edits re-generate the scene coherently; locked objects stay exactly as they were."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import FAST

from iscene_server.engine.pipeline import Stage1Request
from iscene_server.engine.progress import ProgressTracker
from iscene_server.engine.refine.scene import (
    REFINE_PLAN,
    ParentScene,
    RefineEdit,
    check_edit,
    plan_refine,
    render_edit,
)
from iscene_server.errors import InputError
from iscene_server.geometry.voxels import occupancy_grid, transform_voxels
from iscene_server.jobs.runner import run_refine
from iscene_server.nn.ss_decoder import occupied_coords

SHIFT = np.array([[1, 0, 0, 4 / 64], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])  # 4 cells along +x
STAGE1_ONLY = {**FAST, "formats": ["gaussian"]}  # parent params whose rebuild skips the (slow) mesh extraction
LOW_STRENGTH = 0.005  # the tiny model's random velocity field moves occupancy fast: a trained one keeps it longer


def refine(pipeline, parent, inputs, tmp_path, parent_params=FAST, **edit) -> tuple[dict, object]:
    child = tmp_path / f"child-{edit.get('strength')}"
    child.mkdir()
    params = {"transforms": {}, "locked": [], "strength": 0.5, "seed": 3, "parent_params": parent_params, **edit}
    return run_refine(pipeline, child, parent, params, inputs, ProgressTracker(REFINE_PLAN)), child


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def coords(folder, label) -> np.ndarray:
    with np.load(folder / "structure.npz") as arrays:
        return arrays[f"coords_{label}"]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two voxel sets ``[M, 3]``."""
    first, second = set(map(tuple, a.tolist())), set(map(tuple, b.tolist()))
    return len(first & second) / len(first | second)


def as_the_model_sees_it(pipeline, voxels: np.ndarray) -> np.ndarray:
    """An occupancy through the sparse-structure VAE (encode, decode): the shape a refine starts from. A trained
    VAE gives the occupancy back; the tiny one's random weights give a blob that moves with it."""
    with torch.no_grad():
        latent = pipeline.models.get("sparse_structure_encoder")(torch.from_numpy(occupancy_grid(voxels))[None])
        return occupied_coords(pipeline.models.get("sparse_structure_decoder")(latent))[:, 1:].numpy()


def test_strength_zero_keeps_exactly_the_moved_occupancy(pipeline, generated_scene, small_inputs, tmp_path):
    parent = generated_scene
    manifest, child = refine(pipeline, parent, small_inputs, tmp_path, transforms={"4": SHIFT.tolist()},
                             strength=0.0)
    expected = transform_voxels(coords(parent, 4), SHIFT, supersample=3).coords
    assert np.array_equal(coords(child, 4), expected)
    assert manifest["refine"]["moved_only"] == [4] and manifest["refine"]["resampled"] == []
    assert digest(child / "instance_1.glb") == digest(parent / "instance_1.glb")  # untouched: copied, not rebuilt
    assert digest(child / "instance_4.glb") != digest(parent / "instance_4.glb")
    moved = next(e for e in manifest["instances"] if e["label"] == 4)
    before = json.loads((parent / "scene.json").read_text())
    original = next(e for e in before["instances"] if e["label"] == 4)
    assert moved["bbox"]["min"][0] > original["bbox"]["min"][0]  # the rebuilt mesh sits where it was moved
    assert manifest["camera"] == before["camera"] and manifest["frame"] == before["frame"]


def test_low_strength_keeps_the_edited_shape_and_locked_objects_stay(pipeline, generated_scene, small_inputs,
                                                                     tmp_path):
    """A refine that re-generated the object, or ignored the move, would not overlap the moved shape."""
    parent = generated_scene
    manifest, child = refine(pipeline, parent, small_inputs, tmp_path, STAGE1_ONLY, transforms={"4": SHIFT.tolist()},
                             locked=[1], strength=LOW_STRENGTH)
    assert manifest["refine"]["resampled"] == [4] and manifest["refine"]["locked"] == [1]
    edited = as_the_model_sees_it(pipeline, transform_voxels(coords(parent, 4), SHIFT, supersample=3).coords)
    unedited = as_the_model_sees_it(pipeline, coords(parent, 4))
    assert iou(coords(child, 4), edited) > 0.9
    assert iou(unedited, edited) < 0.5  # the move matters: keeping the unmoved shape fails the line above
    assert digest(child / "instance_1.glb") == digest(parent / "instance_1.glb")
    assert np.array_equal(coords(child, 1), coords(parent, 1))
    assert next(e for e in manifest["instances"] if e["label"] == 4)["seed"] == 3


def test_full_strength_is_a_fresh_sample_of_the_edited_view(pipeline, generated_scene, small_inputs, tmp_path):
    """Strength 1 starts from pure noise: stage 1 of the re-rendered edit, with the refine's seed, in the parent's
    frame, is exactly what a plain generation of that view gives."""
    parent = generated_scene
    manifest, child = refine(pipeline, parent, small_inputs, tmp_path, STAGE1_ONLY, transforms={"4": SHIFT.tolist()},
                             locked=[1], strength=1.0)
    assert manifest["refine"]["resampled"] == [4]
    scene = ParentScene(parent, json.loads((parent / "scene.json").read_text()))
    edit = check_edit(scene, {4: SHIFT.tolist()}, [1], 1.0, 3)
    fresh = pipeline.stage1(render_edit(scene, edit), Stage1Request(seed=3, labels=[4], scene_box=scene.frame,
                                                                    steps=FAST["steps"]))
    (instance,) = fresh.structure.instances
    assert np.array_equal(coords(child, 4), instance.coords) and len(instance.coords) > 0
    with np.load(child / "structure.npz") as arrays:
        torch.testing.assert_close(torch.from_numpy(arrays["latent_4"]), instance.latent, atol=1e-6, rtol=1e-6)
    assert not np.array_equal(coords(child, 4), coords(parent, 4))
    assert np.array_equal(coords(child, 1), coords(parent, 1))


@pytest.mark.parametrize("edit, fragment", [
    ({"transforms": {"9": SHIFT.tolist()}}, "no instance 9"),
    ({"transforms": {"4": np.zeros((4, 4)).tolist()}}, "transform of instance 4"),
    ({"transforms": {"4": [[1, 0, 0, 5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}}, "out of the scene volume"),
    ({"locked": [1, 4]}, "nothing to refine"),
    ({"strength": 0.0}, "nothing to refine"),
])
def test_unusable_edits_are_explained(pipeline, generated_scene, small_inputs, tmp_path, edit, fragment):
    with pytest.raises(InputError, match=fragment):
        refine(pipeline, generated_scene, small_inputs, tmp_path, **edit)


def test_objects_the_edit_hides_keep_their_moved_shape(generated_scene):
    scene = ParentScene(generated_scene, json.loads((generated_scene / "scene.json").read_text()))
    edit = RefineEdit({4: SHIFT}, set(), 0.7, 1)
    plan = plan_refine(scene, edit, visible={1})
    assert plan.resample == [1] and plan.hidden == [4] and plan.rebuild_only == [4]


def test_refine_through_the_api(server, finished_job):
    body = {"transforms": {"4": SHIFT.tolist()}, "locked": [1], "strength": 0.5, "seed": 11}
    status, child = server.post_json(f"/v1/jobs/{finished_job}/refine", body)
    assert status == 202 and child["parent"] == finished_job
    assert server.wait(child["job_id"])["state"] == "succeeded"
    manifest = server.get(f"/v1/jobs/{child['job_id']}/scene")
    assert manifest["refine"]["locked"] == [1] and manifest["refine"]["seed"] == 11
    locked_glb = [server.request("GET", f"/v1/jobs/{job}/files/instance_1.glb")[2]
                  for job in (child["job_id"], finished_job)]
    assert locked_glb[0] == locked_glb[1]
    bad = {"transforms": {"4": [[1, 0], [0, 1]]}}
    status, error = server.post_json(f"/v1/jobs/{finished_job}/refine", bad)
    assert status == 400 and "transform of instance 4" in error["error"]["message"]
