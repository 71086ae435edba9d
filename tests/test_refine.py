"""Refine: the artist's edits re-generate the scene coherently; locked objects stay exactly as they were."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import FAST
from iscene_server.engine.pipeline import ScenePipeline
from iscene_server.engine.progress import ProgressTracker
from iscene_server.engine.refine.scene import REFINE_PLAN, ParentScene, RefineEdit, plan_refine
from iscene_server.engine.refine.voxels import transform_voxels
from iscene_server.errors import InputError
from iscene_server.jobs.runner import run_generate, run_refine

SHIFT = np.array([[1, 0, 0, 4 / 64], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])  # 4 cells along +x


@pytest.fixture(scope="module")
def pipeline(tiny_package) -> ScenePipeline:
    return ScenePipeline.from_pretrained(str(tiny_package), device="cpu")


@pytest.fixture(scope="module")
def inputs(small_scene) -> dict[str, bytes]:
    return {"image": small_scene[0], "labels": small_scene[1]}


@pytest.fixture(scope="module")
def parent(pipeline, inputs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("parent")
    run_generate(pipeline, folder, FAST, inputs, ProgressTracker(REFINE_PLAN))
    return folder


def refine(pipeline, parent, inputs, tmp_path, **edit) -> tuple[dict, object]:
    child = tmp_path / f"child-{edit.get('strength')}"
    child.mkdir()
    params = {"transforms": {}, "locked": [], "strength": 0.5, "seed": 3, "parent_params": FAST, **edit}
    return run_refine(pipeline, child, parent, params, inputs, ProgressTracker(REFINE_PLAN)), child


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def coords(folder, label) -> np.ndarray:
    with np.load(folder / "structure.npz") as arrays:
        return arrays[f"coords_{label}"]


def test_strength_zero_keeps_exactly_the_moved_occupancy(pipeline, parent, inputs, tmp_path):
    manifest, child = refine(pipeline, parent, inputs, tmp_path, transforms={"4": SHIFT.tolist()}, strength=0.0)
    expected = transform_voxels(coords(parent, 4), SHIFT, supersample=3).coords
    assert np.array_equal(coords(child, 4), expected)
    assert manifest["refine"]["moved_only"] == [4] and manifest["refine"]["resampled"] == []
    for name in ("instance_1.glb",):  # untouched: copied byte for byte, not rebuilt
        assert digest(child / name) == digest(parent / name)
    assert digest(child / "instance_4.glb") != digest(parent / "instance_4.glb")
    moved = next(e for e in manifest["instances"] if e["label"] == 4)
    before = json.loads((parent / "scene.json").read_text())
    original = next(e for e in before["instances"] if e["label"] == 4)
    assert moved["bbox"]["min"][0] > original["bbox"]["min"][0]  # the rebuilt mesh sits where it was moved
    assert manifest["camera"] == before["camera"] and manifest["frame"] == before["frame"]


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_higher_strengths_change_the_result_and_locked_objects_stay(pipeline, parent, inputs, tmp_path, strength):
    manifest, child = refine(pipeline, parent, inputs, tmp_path, transforms={"4": SHIFT.tolist()}, locked=[1],
                             strength=strength)
    assert manifest["refine"]["resampled"] == [4]
    assert digest(child / "instance_1.glb") == digest(parent / "instance_1.glb")
    assert np.array_equal(coords(child, 1), coords(parent, 1))
    moved = transform_voxels(coords(parent, 4), SHIFT, supersample=3).coords
    assert not np.array_equal(coords(child, 4), moved)
    assert next(e for e in manifest["instances"] if e["label"] == 4)["seed"] == 3


@pytest.mark.parametrize("edit, fragment", [
    ({"transforms": {"9": SHIFT.tolist()}}, "no instance 9"),
    ({"transforms": {"4": np.zeros((4, 4)).tolist()}}, "transform of instance 4"),
    ({"transforms": {"4": [[1, 0, 0, 5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}}, "out of the scene volume"),
    ({"locked": [1, 4]}, "nothing to refine"),
    ({"strength": 0.0}, "nothing to refine"),
])
def test_unusable_edits_are_explained(pipeline, parent, inputs, tmp_path, edit, fragment):
    with pytest.raises(InputError, match=fragment):
        refine(pipeline, parent, inputs, tmp_path, **edit)


def test_objects_the_edit_hides_keep_their_moved_shape(parent):
    scene = ParentScene(parent, json.loads((parent / "scene.json").read_text()))
    edit = RefineEdit({4: SHIFT}, set(), 0.7, 1)
    plan = plan_refine(scene, edit, visible={1})
    assert plan.resample == [1] and plan.hidden == [4] and plan.rebuild_only == [4]


def test_refine_through_the_api(server_for_refine, small_scene):
    server = server_for_refine
    _, created = server.submit(*small_scene, FAST)
    assert server.wait(created["job_id"])["state"] == "succeeded"
    body = {"transforms": {"4": SHIFT.tolist()}, "locked": [1], "strength": 0.5, "seed": 11}
    status, child = server.post_json(f"/v1/jobs/{created['job_id']}/refine", body)
    assert status == 202 and child["parent"] == created["job_id"]
    assert server.wait(child["job_id"])["state"] == "succeeded"
    manifest = server.get(f"/v1/jobs/{child['job_id']}/scene")
    assert manifest["refine"]["locked"] == [1] and manifest["refine"]["seed"] == 11
    files = lambda job, name: server.request("GET", f"/v1/jobs/{job}/files/{name}")[2]
    assert files(child["job_id"], "instance_1.glb") == files(created["job_id"], "instance_1.glb")
    bad = {"transforms": {"4": [[1, 0], [0, 1]]}}
    status, error = server.post_json(f"/v1/jobs/{created['job_id']}/refine", bad)
    assert status == 400 and "transform of instance 4" in error["error"]["message"]


@pytest.fixture
def server_for_refine(tiny_package, tmp_path):
    from server_process import ServerProcess
    server = ServerProcess(tiny_package, tmp_path / "data").start()
    yield server
    server.stop()
