"""Cancelling within a second in every stage: the cancel event is set from inside a stage's work (a spy on one of
its pieces), and the work must stop at the next check: no piece of work runs after the cancel."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from conftest import FAST
from test_camera import render_case

from iscene_server.engine import results
from iscene_server.engine.camera import projection, solve
from iscene_server.engine.camera.model import ORTHOGRAPHIC, PERSPECTIVE
from iscene_server.engine.eta import COSTS_FILE
from iscene_server.engine.pipeline import GenerationRequest
from iscene_server.engine.preprocess import build_slots, crop_bbox, load_scene, slots
from iscene_server.engine.progress import ProgressTracker
from iscene_server.engine.refine.scene import (
    ParentScene,
    Refiner,
    check_edit,
)
from iscene_server.engine.results import SCENE_JSON
from iscene_server.errors import Cancelled, StateError
from iscene_server.geometry import voxels
from iscene_server.geometry.raster import triangles as raster
from iscene_server.geometry.raster.triangles import RenderMesh, render_instances
from iscene_server.jobs.runner import run_generate
from iscene_server.jobs.service import JobService, ServiceSettings
from iscene_server.jobs.store import CANCELLED, SUCCEEDED


class CancelAfter:
    """A spy on one piece of a stage's work: the ``after``-th call sets the job's cancel event; counts the calls
    made after that (the work done past the cancel)."""

    def __init__(self, function, after: int, cancel: threading.Event):
        self.function, self.after, self.cancel = function, after, cancel
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        result = self.function(*args, **kwargs)
        if self.calls == self.after:
            self.cancel.set()
        return result

    @property
    def after_cancel(self) -> int:
        return self.calls - self.after


def tracker_with_event() -> tuple[ProgressTracker, threading.Event]:
    cancel = threading.Event()
    return ProgressTracker({"work": 1.0}, cancel=cancel), cancel


@pytest.mark.parametrize("after", [3, 55, 80])  # in the orientation search, the refinements, the perspective fit
def test_camera_solve_stops_at_the_next_check(monkeypatch, after):
    _, voxel_sets, ids = render_case(PERSPECTIVE, 0, (640, 480), 50.0)
    tracker, cancel = tracker_with_event()
    spy = CancelAfter(projection.splat_rectangles, after, cancel)
    monkeypatch.setattr(projection, "splat_rectangles", spy)
    with pytest.raises(Cancelled):
        solve.solve_camera(voxel_sets, ids, crop_bbox(ids > 0), check=tracker.check_cancelled)
    assert spy.after_cancel <= 1  # a moment fit renders twice between two checks


def test_camera_solve_checks_all_along_and_is_unchanged_by_them():
    _, voxel_sets, ids = render_case(ORTHOGRAPHIC, 5, (640, 480))
    calls = []
    fit = solve.solve_camera(voxel_sets, ids, crop_bbox(ids > 0), check=lambda: calls.append(1))
    assert len(calls) > 40
    assert fit.to_dict() == solve.solve_camera(voxel_sets, ids, crop_bbox(ids > 0)).to_dict()


def grid_mesh(label: int, offset: float, n: int = 60) -> RenderMesh:
    """A finely triangulated square facing the camera (2 n^2 faces)."""
    u, v = np.meshgrid(np.linspace(-0.2, 0.2, n + 1), np.linspace(-0.2, 0.2, n + 1), indexing="ij")
    vertices = np.stack([u.ravel() + offset, np.zeros(u.size), v.ravel()], axis=1)
    a = (np.arange(n)[:, None] * (n + 1) + np.arange(n)[None, :]).ravel()
    faces = np.concatenate([np.stack([a, a + 1, a + n + 2], 1), np.stack([a, a + n + 2, a + n + 1], 1)])
    return RenderMesh(vertices, faces, np.full((len(vertices), 3), 0.5), label)


@pytest.mark.parametrize("piece", ["project_mesh", "cull_faces", "draw_spans"])
def test_refine_render_stops_at_the_next_check(monkeypatch, piece):
    camera, _, _ = render_case(ORTHOGRAPHIC, 5, (640, 480))
    meshes = [grid_mesh(label, offset) for label, offset in ((1, -0.25), (2, 0.0), (3, 0.25))]
    if piece == "cull_faces":  # one big mesh: its faces are culled in many chunks, with a check between them
        meshes = meshes[:1]
        monkeypatch.setattr(raster, "FACE_CHUNK", 64)
    tracker, cancel = tracker_with_event()
    spy = CancelAfter(getattr(raster, piece), 1, cancel)
    monkeypatch.setattr(raster, piece, spy)
    with pytest.raises(Cancelled):
        render_instances(meshes, camera, budget=4096, check=tracker.check_cancelled)
    assert spy.after_cancel == 0


def test_moving_voxels_stops_at_the_next_check(monkeypatch):
    monkeypatch.setattr(voxels, "MAX_PROBES", 27 * 500)  # many small chunks
    tracker, cancel = tracker_with_event()
    spy = CancelAfter(voxels.lookup, 2, cancel)
    monkeypatch.setattr(voxels, "lookup", spy)
    coords = np.argwhere(np.ones((12, 12, 12), bool)) + 20
    scale = np.diag([1.3, 1.3, 1.3, 1.0])
    with pytest.raises(Cancelled):
        voxels.transform_voxels(coords, scale, supersample=3, check=tracker.check_cancelled)
    assert spy.after_cancel == 0


def test_preprocessing_stops_at_the_next_instance(monkeypatch, small_scene):
    scene = load_scene(*small_scene)
    assert len(scene.label_ids) == 2
    tracker, cancel = tracker_with_event()
    spy = CancelAfter(slots.resize_lanczos4_rows, 1, cancel)  # one resize per instance slot ("global")
    monkeypatch.setattr(slots, "resize_lanczos4_rows", spy)
    with pytest.raises(Cancelled):
        build_slots(scene, "global", check=tracker.check_cancelled)
    assert spy.after_cancel == 0


# ---- stages of a real (tiny) job ---------------------------------------------------------------------------

def test_export_stops_between_files_and_presents_no_scene(monkeypatch, pipeline, small_inputs, tmp_path):
    tracker, cancel = tracker_with_event()
    spy = CancelAfter(results.write_instance_glb, 3, cancel)  # the two objects' proxies, then the first mesh
    monkeypatch.setattr(results, "write_instance_glb", spy)
    with pytest.raises(Cancelled):
        run_generate(pipeline, tmp_path, FAST, small_inputs, tracker)
    assert spy.calls == 3 and len(list(tmp_path.glob("instance_*.glb"))) == 1
    assert len(list(tmp_path.glob("proxy_*.glb"))) == 2
    assert not (tmp_path / SCENE_JSON).exists() and not (tmp_path / "scene.glb").exists()
    assert tracker.stage == "export" and not tracker.done


@pytest.mark.parametrize("piece", ["render", "move", "encode"])
def test_refine_stops_at_the_next_check(monkeypatch, pipeline, generated_scene, small_inputs, piece):
    """The cancel comes from inside the refine's own work (the edit's render, moving voxels, the SS encoder): the
    refine stops there, before stage 1."""
    tracker, cancel = tracker_with_event()
    parent_scene = ParentScene(generated_scene, results.read_manifest(generated_scene))
    shift = np.array([[1, 0, 0, 4 / 64], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    edit = check_edit(parent_scene, {4: shift.tolist()}, [], 0.5 if piece != "encode" else 0.0, 3)
    encoder = pipeline.models.get("sparse_structure_encoder")
    spies = {"render": (raster, "draw_spans"), "move": (voxels, "lookup")}
    if piece == "encode":
        spy = CancelAfter(lambda *_: None, 1, cancel)
        handle = encoder.register_forward_pre_hook(lambda *_: spy())  # the cancel comes as the encoder starts
    else:
        module, name = spies[piece]
        spy = CancelAfter(getattr(module, name), 1, cancel)
        monkeypatch.setattr(module, name, spy)
        handle = None
    stages = []
    tracker.listener = lambda update: stages.append(update.stage)
    try:
        with pytest.raises(Cancelled):
            Refiner(pipeline).run(parent_scene, load_scene(small_inputs["image"], small_inputs["labels"]), edit,
                                  GenerationRequest(steps=2, slat_steps=2, scene_box=parent_scene.frame), tracker)
    finally:
        if handle is not None:
            handle.remove()
    assert spy.after_cancel == 0
    assert "stage1" not in stages and "stage2" not in stages


# ---- the job service: costs learned and predicted; a cancel during export -----------------------------------

def wait_for(service: JobService, job_id: str, states, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout  # a deadline on the wait, not an assertion on how long anything took
    while time.monotonic() < deadline:
        status = service.status(job_id)
        if status["state"] in states:
            return status
        threading.Event().wait(0.05)
    raise AssertionError(f"job {job_id} did not reach {states}: {service.status(job_id)}")


def test_the_service_learns_stage_costs_and_predicts_the_next_job(monkeypatch, tiny_package, small_inputs, tmp_path):
    service = JobService(ServiceSettings(model=str(tiny_package), data_dir=tmp_path, device="cpu"))
    service.start()
    try:
        inputs = small_inputs
        first = service.submit("generate", {**FAST, "labels": [4]}, inputs)  # one object is enough to learn from
        wait_for(service, first.id, (SUCCEEDED,))
        devices = json.loads((tmp_path / COSTS_FILE).read_text())["devices"]
        (key, kinds), = devices.items()
        assert key == f"{tiny_package}|cpu|float32"
        learned = kinds["generate"]
        assert {"preprocess", "condition", "stage1", "decode", "stage2", "meshes", "export"} <= set(learned)
        assert learned["camera"]["seconds_per_unit"] == 0  # fitted inside another stage, never a stage of its own
        assert all(entry["jobs"] == 1 for entry in learned.values())

        cancel_in_export = {}

        def writes_then_cancels(path, *args, **kwargs):
            results_write(path, *args, **kwargs)
            if path.name.startswith("instance_"):  # the first object's mesh (its proxy came with the layout)
                service.cancel(cancel_in_export["job"])

        results_write = results.write_instance_glb
        monkeypatch.setattr(results, "write_instance_glb", writes_then_cancels)
        second = service.submit("generate", dict(FAST), inputs)
        cancel_in_export["job"] = second.id
        status = wait_for(service, second.id, (CANCELLED, SUCCEEDED))
        assert status["state"] == CANCELLED
        assert len(list(service.store.folder(second.id).glob("instance_*.glb"))) == 1
        with pytest.raises(StateError):
            service.require_finished(second.id)
    finally:
        service.stop()
