"""The installed extension driving a real ``iscene-server`` (tiny package) from headless Blender.

Operators are called as an artist's clicks would call them; the pump that a timer runs in Blender is called
directly (timers never fire in the ``bpy`` module), exactly as often as the test needs.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from server_process import ServerProcess

SLOW_STEPS = 100  # long enough to cancel or kill the server while the job runs
TOKEN = "blender-test-token"


def pump_until(addon, done: Callable[[], bool], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        addon.pump.pump_once()
        if time.monotonic() > deadline:
            jobs = {key: (job.state, job.message) for key, job in addon.pump.RUNTIME.jobs.items()}
            raise TimeoutError(f"gave up after {timeout} s; jobs: {jobs}")
        time.sleep(0.05)
    addon.pump.pump_once()


def counted_objects(bpy, addon, image) -> int:
    """The label map's object count as the panel shows it, once the refresh (a timer in Blender) has landed."""
    addon.props.label_stats(image)
    addon.props.refresh_label_stats()
    for _ in range(2):  # land what was pending, then a read made after the caller's last change
        addon.props.LABEL_STATS.wait()
        addon.props.refresh_label_stats()
    return addon.props.label_stats(image).count


def last_job(addon):
    return list(addon.pump.RUNTIME.jobs.values())[-1]


def run_operator(addon, operator: Callable[[], set]):
    """Click ``operator``, check it returned at once with the job still in flight, pump until the job ends."""
    before = set(addon.pump.RUNTIME.jobs)
    assert operator() == {"FINISHED"}
    (key,) = set(addon.pump.RUNTIME.jobs) - before
    job = addon.pump.RUNTIME.jobs[key]
    assert job.active, "the operator must hand the job to a worker, not wait for it"
    pump_until(addon, lambda: not job.active)
    return job


_GENERATED: dict[str, str] = {}  # server URL -> the server job the first generate there made


def generate(bpy, addon, fresh: bool = False):
    """Click Generate; after the first time on a server, re-import that job from the history instead (the same
    scene, downloaded again), which keeps these tests fast and exercises Re-import."""
    url = addon.preferences.preferences().server_url
    if not fresh and url in _GENERATED:
        return reimport(bpy, addon, _GENERATED[url])
    job = run_operator(addon, bpy.ops.iscene.generate)
    assert job.state == "succeeded", f"{job.message} ({job.hint})"
    _GENERATED[url] = job.server_id
    return job


def reimport(bpy, addon, server_id: str):
    """Merge the server's jobs into the history (Refresh Jobs) and click Re-import on ``server_id``'s row."""
    history = bpy.context.scene.iscene.history
    if not any(r.server_id == server_id for r in history):
        assert bpy.ops.iscene.refresh_jobs() == {"FINISHED"}
        pump_until(addon, lambda: any(r.server_id == server_id for r in history), timeout=30)
    job = run_operator(addon, lambda: bpy.ops.iscene.reimport(key=server_id))
    assert job.state == "succeeded", f"{job.message} ({job.hint})"
    return job


def scene_root(bpy, addon, job):
    return next(o for o in bpy.data.objects if o.get("iscene_root") and o["iscene_scene"] == job.root)


def instances(bpy, addon, job) -> dict:
    root = scene_root(bpy, addon, job)
    return {int(o["iscene_label"]): o for o in addon.provenance.instances(root)}


def world_bounds(obj) -> np.ndarray:
    """[[min xyz], [max xyz]] of the object's evaluated-free mesh vertices in world space."""
    local = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", local)
    local = np.c_[local.reshape(-1, 3), np.ones(len(local) // 3)]
    world = local @ np.array(obj.matrix_world).T
    return np.stack([world[:, :3].min(0), world[:, :3].max(0)])


def scene_to_world(root) -> np.ndarray:
    """The scene frame S into the world, from the root's stored scale and anchor (independent of the add-on)."""
    scale, anchor = float(root["iscene_scale"]), np.array(root["iscene_anchor"], float)
    to_root = np.diag([scale, scale, scale, 1.0]) @ translation(*-anchor)
    return np.array(root.matrix_world) @ to_root


def manifest_bounds(entry: dict, root) -> np.ndarray:
    """The manifest's box of an instance (scene frame) mapped into the world by the job's root."""
    box = np.array([entry["bbox"]["min"], entry["bbox"]["max"]])
    world = np.c_[box, np.ones(2)] @ scene_to_world(root).T
    return world[:, :3]


def translation(x: float, y: float, z: float) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = x, y, z
    return matrix


def job_folder_file(job, name: str) -> bytes:
    return (job.folder / name).read_bytes()


# --- generate ---------------------------------------------------------------------------------------------

def test_generate_imports_one_posed_object_per_instance(bpy, addon, inputs, server):
    assert counted_objects(bpy, addon, inputs.labels) == 2
    job = generate(bpy, addon, fresh=True)
    manifest = server.get(f"/v1/jobs/{job.server_id}/scene")
    collection = bpy.data.collections["I-Scene living_room"]
    objects = instances(bpy, addon, job)
    assert sorted(objects) == [1, 4] == sorted(e["label"] for e in manifest["instances"])
    root = bpy.data.objects["living_room_scene"]
    assert root["iscene_job"] == job.server_id and collection in root.users_collection
    assert root.type == "EMPTY" and np.allclose(np.array(root.matrix_world), np.eye(4)), "unscaled, at the cursor"
    for entry in manifest["instances"]:
        obj = objects[entry["label"]]
        assert obj.name == f"living_room_{entry['label']}"
        assert obj.parent == root and collection in obj.users_collection
        assert len(obj.data.polygons) == entry["faces"] and len(obj.data.vertices) == entry["vertices"]
        assert np.allclose(world_bounds(obj), manifest_bounds(entry, root), atol=1e-4)
        origin = scene_to_world(root) @ np.r_[entry["bbox"]["origin"], 1.0]
        assert np.allclose(np.array(obj.matrix_world.translation), origin[:3], atol=1e-4), "origin: bottom centre"
        assert np.allclose(obj.matrix_world.to_scale(), (1, 1, 1), atol=1e-6), "mesh data in metres"
        assert obj["iscene_job"] == job.server_id and obj["iscene_seed"] == entry["seed"]
        assert json.loads(obj["iscene_model"]) == manifest["models"]
        assert obj["iscene_mesh_sha256"] == hashlib.sha256(job_folder_file(job, entry["file"])).hexdigest()
    assert {o.name for o in bpy.context.selected_objects} == {o.name for o in objects.values()}
    assert bpy.context.view_layer.objects.active.name in {o.name for o in objects.values()}


def test_imported_objects_use_a_material_of_their_own_and_keep_their_vertex_colours(bpy, addon, inputs):
    job = generate(bpy, addon)
    for obj in instances(bpy, addon, job).values():
        material = obj.active_material
        assert material.get(addon.importer.COLOUR_MATERIAL) and material.users == 1, "one material per object"
        (link,) = [link for link in material.node_tree.links if link.to_socket.name == "Base Color"]
        assert link.from_node.type == "TEX_IMAGE" and link.to_node.type == "BSDF_PRINCIPLED"  # the baked texture
        colours = obj.data.color_attributes[addon.importer.COLOR_ATTRIBUTE]
        assert colours.domain == "POINT" and len(colours.data) == len(obj.data.vertices)
        values = np.empty(len(colours.data) * 4, np.float32)
        colours.data.foreach_get("color", values)
        assert values.reshape(-1, 4)[:, :3].std() > 0, "the vertex colours came through, not one flat colour"


def test_camera_sees_the_scene_as_the_image_with_it_behind(bpy, addon, inputs, server):
    job = generate(bpy, addon)
    camera_settings = server.get(f"/v1/jobs/{job.server_id}/scene")["camera"]["blender"]
    camera = bpy.data.objects["living_room_camera"]
    scene = bpy.context.scene
    assert scene.camera == camera and camera.parent == bpy.data.objects["living_room_scene"]
    assert (scene.render.resolution_x, scene.render.resolution_y) == tuple(camera_settings["resolution"])
    assert camera.data.type == camera_settings["type"]
    background = camera.data.background_images[0]
    assert background.image == inputs.image and camera.data.show_background_images
    assert np.allclose(camera.matrix_world.to_scale(), (1, 1, 1), atol=1e-5), "the root's scale is not inherited"
    location = scene_to_world(camera.parent) @ np.r_[camera_settings["location"], 1.0]
    assert np.allclose(np.array(camera.matrix_world.translation), location[:3], atol=1e-4)


def test_undo_removes_the_whole_import_in_one_step(bpy, addon, inputs):
    bpy.ops.ed.undo_push(message="before generating")
    generate(bpy, addon)
    assert "I-Scene living_room" in bpy.data.collections
    bpy.ops.ed.undo()
    assert "I-Scene living_room" not in bpy.data.collections
    assert not [o for o in bpy.data.objects if o.name.startswith("living_room_")]
    bpy.ops.ed.redo()
    assert len(bpy.data.collections["I-Scene living_room"].objects) == 4  # root, two objects, camera


# --- regenerate and refine --------------------------------------------------------------------------------

def select_only(bpy, *objects) -> None:
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj in objects)
    bpy.context.view_layer.objects.active = objects[0] if objects else None


def test_regenerate_swaps_the_mesh_and_keeps_the_artists_edits(bpy, addon, inputs, server):
    first = generate(bpy, addon)
    objects = instances(bpy, addon, first)
    table, plant = objects[1], objects[4]
    root = table.parent
    plant_matrix = plant.matrix_world.copy()
    edit = translation(0.3, -0.2, 0.0) @ np.array(
        [[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])  # a quarter turn and a shove, in the world
    table.matrix_world = type(table.matrix_world)(edit.tolist()) @ table.matrix_world  # about the world origin
    scene_edit = np.array(addon.frames.edit_in_scene(root, table))
    table.modifiers.new("Smooth", "SUBSURF")
    table.iscene_seed = table["iscene_mesh_seed"]  # unchanged field: Regenerate picks a new random seed
    override = bpy.data.materials.new("artist's wood")
    table.material_slots[0].link = "OBJECT"
    table.material_slots[0].material = override
    old_mesh, old_seed = table.data.name, table["iscene_seed"]

    select_only(bpy, table)
    job = run_operator(addon, bpy.ops.iscene.regenerate)
    assert job.state == "succeeded", job.message

    assert server.get(f"/v1/jobs/{job.server_id}")["params"]["labels"] == [1]
    manifest = server.get(f"/v1/jobs/{job.server_id}/scene")
    entry = next(e for e in manifest["instances"] if e["label"] == 1)
    table = bpy.data.objects["living_room_1"]
    assert table.data.name != old_mesh and old_mesh not in bpy.data.meshes, "the old mesh is swapped out"
    assert table["iscene_seed"] == entry["seed"] != old_seed and table["iscene_job"] == job.server_id
    assert np.allclose(np.array(addon.frames.edit_in_scene(root, table)), scene_edit, atol=1e-5)
    expected = scene_to_world(root) @ scene_edit @ np.linalg.inv(scene_to_world(root))
    assert np.allclose(world_bounds(table), bounds_of_box(manifest_bounds(entry, root), expected), atol=1e-4)
    assert table.parent == root and [m.type for m in table.modifiers] == ["SUBSURF"]
    assert table.material_slots[0].material == override
    assert np.allclose(np.array(objects[4].matrix_world), np.array(plant_matrix))
    assert root["iscene_job"] == job.server_id


def bounds_of_box(box: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The axis-aligned bounds of an axis-aligned box after ``matrix`` (exact for quarter turns)."""
    corners = np.array([[x, y, z, 1.0] for x in box[:, 0] for y in box[:, 1] for z in box[:, 2]]) @ matrix.T
    return np.stack([corners[:, :3].min(0), corners[:, :3].max(0)])


def move_in_world(obj, x: float, y: float, z: float) -> None:
    """What grabbing the object in the viewport does."""
    obj.matrix_world = type(obj.matrix_world)(translation(x, y, z).tolist()) @ obj.matrix_world


def test_refine_sends_the_edits_in_the_scene_frame_and_respects_locks(bpy, addon, inputs, server):
    first = generate(bpy, addon)
    objects = instances(bpy, addon, first)
    table, plant = objects[1], objects[4]
    root = plant.parent
    table_matrix, table_hash = table.matrix_world.copy(), table["iscene_mesh_sha256"]
    move_in_world(plant, 0.25, 0, 0)  # metres
    move_in_world(table, 0, 0.5, 0)  # moved but locked: refine must keep it as it is
    table.iscene_locked = True
    table_matrix = table.matrix_world.copy()
    inputs.refine_selected, inputs.strength = False, 0.5
    select_only(bpy, plant)

    job = run_operator(addon, bpy.ops.iscene.refine)
    assert job.state == "succeeded", job.message

    params = server.get(f"/v1/jobs/{job.server_id}")["params"]
    assert params["locked"] == [1] and list(params["transforms"]) == ["4"]
    scale = root["iscene_scale"]
    assert np.allclose(np.array(params["transforms"]["4"]), translation(0.25 / scale, 0, 0), atol=1e-6)
    manifest = server.get(f"/v1/jobs/{job.server_id}/scene")
    assert 4 in manifest["refine"]["resampled"] + manifest["refine"]["moved_only"]
    entry = next(e for e in manifest["instances"] if e["label"] == 4)
    plant = bpy.data.objects["living_room_4"]
    assert plant["iscene_job"] == job.server_id
    assert addon.frames.is_identity(addon.frames.edit_in_scene(root, plant)), "the result already holds the move"
    assert np.allclose(world_bounds(plant), manifest_bounds(entry, root), atol=1e-4)
    table = bpy.data.objects["living_room_1"]
    assert table["iscene_mesh_sha256"] == table_hash and table.matrix_world == table_matrix


def test_refine_of_selected_objects_locks_the_others(bpy, addon, inputs):
    first = generate(bpy, addon)
    objects = instances(bpy, addon, first)
    root = scene_root(bpy, addon, first)
    move_in_world(objects[4], 0.25, 0, 0)
    move_in_world(objects[1], -0.25, 0, 0)
    select_only(bpy, objects[4])
    params = addon.job_requests.refine_request(bpy.context, root, True, 0.5).params
    assert list(params["transforms"]) == [4] and params["locked"] == [1]
    bpy.data.objects.remove(objects[1])
    params = addon.job_requests.refine_request(bpy.context, root, False, 0.5).params
    assert list(params["transforms"]) == [4] and params["locked"] == [1], "a deleted object is kept out"


# --- cancel and failures ------------------------------------------------------------------------------------

def start(bpy, addon, operator=None):
    """Click Generate (or ``operator``) and pump until the server has accepted the job."""
    before = set(addon.pump.RUNTIME.jobs)
    assert (operator or bpy.ops.iscene.generate)() == {"FINISHED"}
    (key,) = set(addon.pump.RUNTIME.jobs) - before
    job = addon.pump.RUNTIME.jobs[key]
    pump_until(addon, lambda: job.server_id is not None or not job.active, timeout=30)
    return job


def test_cancel_stops_the_job_on_the_server(bpy, addon, inputs, server):
    inputs.steps = SLOW_STEPS
    job = start(bpy, addon)
    assert bpy.ops.iscene.cancel(key=job.key) == {"FINISHED"}
    pump_until(addon, lambda: not job.active, timeout=60)
    assert job.state == "cancelled"
    stopped = server.wait(job.server_id, timeout=60)
    assert stopped["state"] == "cancelled"
    # cancelled during stage 1, before the layout: nothing to keep (after the layout the proxies stay, see
    # test_progressive.py::test_cancel_after_the_layout_keeps_the_proxies)
    assert not stopped["layout_ready"] and stopped["events"] == []
    assert "I-Scene living_room" not in bpy.data.collections


def test_server_killed_mid_job_fails_the_job_with_a_clear_message(bpy, addon, inputs, prefs, tiny_package,
                                                                   tmp_path, monkeypatch):
    monkeypatch.setattr(addon.jobs, "LOST_CONNECTION_S", 1.0)
    doomed = ServerProcess(tiny_package, tmp_path / "data").start()
    try:
        prefs.server_url = doomed.url
        inputs.steps = SLOW_STEPS
        job = start(bpy, addon)
        doomed.kill()
        pump_until(addon, lambda: not job.active, timeout=30)
    finally:
        doomed.kill()
    assert job.state == "failed"
    assert "lost the connection" in job.message and "server is still running" in job.hint
    addon.pump.RUNTIME.check_health(addon.preferences.client(bpy.context))
    pump_until(addon, lambda: addon.pump.RUNTIME.health_error is not None, timeout=30)
    assert addon.panel.health_line(bpy.context) == ("ERROR", "Server not reachable")


@contextmanager
def fake_server(status: int, content_type: str, body: bytes) -> Iterator[str]:
    """Some other web service on a loopback port, answering every request the same way."""

    class Handler(BaseHTTPRequestHandler):
        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("status, content_type, body", [
    (200, "text/html", b"<html><body>Router admin</body></html>"),
    (200, "application/json", b'{"status": "ok"}'),
    (404, "text/plain", b"Not Found"),
], ids=["html-page", "other-json-api", "not-found"])
def test_a_different_service_at_the_url_is_named_as_such(bpy, addon, inputs, prefs, status, content_type, body):
    with fake_server(status, content_type, body) as url:
        prefs.server_url = url
        bpy.ops.iscene.check_server()
        pump_until(addon, lambda: addon.pump.RUNTIME.health_error is not None, timeout=30)
        assert addon.panel.health_line(bpy.context) == ("ERROR", "Not an I-Scene server at this URL")
        with pytest.raises(RuntimeError, match=r"(not an|not like an) I-Scene server.*server URL"):
            bpy.ops.iscene.generate()  # greyed out, saying why
        addon.pump.RUNTIME.health_error = None  # as before the first health check: the job finds out
        job = run_operator(addon, bpy.ops.iscene.generate)
    assert job.state == "failed"
    assert "not an I-Scene server" in job.message or "not like an I-Scene server" in job.message
    assert "server URL" in job.hint


def test_nothing_listening_is_reported_not_waited_on(bpy, addon, inputs, prefs):
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # held, so no other process can listen there, but never listening itself
        prefs.server_url = f"http://127.0.0.1:{bound.getsockname()[1]}"
        job = run_operator(addon, bpy.ops.iscene.generate)
    assert job.state == "failed" and "cannot reach the I-Scene server" in job.message
    assert "iscene-server serve" in job.hint


@pytest.fixture(scope="module")
def guarded_server(tiny_package, tmp_path_factory) -> Iterator[ServerProcess]:
    process = ServerProcess(tiny_package, tmp_path_factory.mktemp("guarded") / "data", token=TOKEN).start()
    yield process
    process.stop()


def test_a_wrong_token_is_rejected_with_the_fix(bpy, addon, inputs, prefs, guarded_server):
    prefs.server_url, prefs.token = guarded_server.url, "not-the-token"
    bpy.ops.iscene.check_server()
    pump_until(addon, lambda: addon.pump.RUNTIME.health_error is not None, timeout=30)
    assert addon.panel.health_line(bpy.context)[1].startswith("Token rejected")
    with pytest.raises(RuntimeError, match="access token"):
        bpy.ops.iscene.generate()
    addon.pump.RUNTIME.health_error = None
    job = run_operator(addon, bpy.ops.iscene.generate)
    assert job.state == "failed" and "access token" in job.message and "add-on preferences" in job.hint
    assert guarded_server.get("/v1/jobs")["jobs"] == [], "nothing was queued"

    prefs.token = TOKEN
    addon.pump.RUNTIME.health, addon.pump.RUNTIME.health_error = None, None
    bpy.ops.iscene.check_server()
    pump_until(addon, lambda: addon.pump.RUNTIME.health is not None or addon.pump.RUNTIME.health_error is not None)
    assert addon.pump.RUNTIME.health_error is None
    assert addon.panel.health_line(bpy.context)[0] == "CHECKMARK"


def test_the_token_is_not_saved_in_blend_files(bpy, addon, prefs, tmp_path):
    prefs.token = "secret-token-value"
    path = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path), copy=True)
    assert b"secret-token-value" not in path.read_bytes()


def test_remote_url_needs_online_access(bpy, addon, inputs, prefs, online_access):
    online_access(False)
    prefs.server_url = "http://192.0.2.10:8712"
    jobs = dict(addon.pump.RUNTIME.jobs)
    with pytest.raises(RuntimeError, match="Allow Online Access"):
        bpy.ops.iscene.generate()
    with pytest.raises(RuntimeError, match="Allow Online Access"):
        bpy.ops.iscene.check_server()
    assert addon.pump.RUNTIME.jobs == jobs, "no request was started"
    icon, text = addon.panel.health_line(bpy.context)
    assert icon == "ERROR" and "Allow Online Access" in text
    online_access(True)
    assert addon.preferences.network_problem(prefs.server_url) == ""
    assert addon.preferences.network_problem("http://127.0.0.1:8712") == ""


def test_generate_without_inputs_says_what_is_missing(bpy, addon, prefs):
    with pytest.raises(RuntimeError, match="choose an image and its label map"):
        bpy.ops.iscene.generate()
    assert not addon.pump.RUNTIME.jobs


def test_server_side_input_errors_reach_the_artist(bpy, addon, inputs, scene_pngs, tmp_path):
    from PIL import Image
    squashed = tmp_path / "squashed_labels.png"
    Image.new("L", (320, 100), 3).save(squashed)  # one object, but not the image's framing
    inputs.labels = bpy.data.images.load(str(squashed))
    job = run_operator(addon, bpy.ops.iscene.generate)
    assert job.state == "failed" and "aspect" in job.message and job.hint
    assert bpy.ops.iscene.copy_error(key=job.key) == {"FINISHED"}  # headless Blender has no clipboard to read
    report = addon.wording.error_report(addon.history.find(bpy.context.scene, job.key))
    assert job.message in report and job.hint in report and "Server job: none" in report  # refused at submit
    retried = run_operator(addon, lambda: bpy.ops.iscene.retry(key=job.key))
    assert retried.key != job.key and retried.inputs == job.inputs and retried.params == job.params
    assert (retried.state, retried.message) == ("failed", job.message), "the same inputs meet the same check"


# --- the add-on's lifecycle -----------------------------------------------------------------------------------

def test_disable_during_a_job_stops_its_worker(bpy, addon, inputs, server):
    from .conftest import disable_addon, enable_addon
    inputs.steps = SLOW_STEPS
    job = start(bpy, addon)
    runtime, threads = addon.pump.RUNTIME, list(addon.pump.RUNTIME.threads)
    addon.pump.ensure_timer()
    disable_addon()
    try:
        assert not bpy.app.timers.is_registered(addon.pump.tick)
        assert job.cancel.is_set() and not any(thread.is_alive() for thread in threads)
        assert not runtime.threads
    finally:
        enable_addon()
    assert server.wait(job.server_id, timeout=60)["state"] == "cancelled", "the server stops the abandoned job"


class RecordingLayout:
    """Stands in for ``UILayout`` (headless Blender draws no panels): records what a panel draws and checks that
    every property and operator it names exists."""

    def __init__(self, bpy, drawn: list):
        self.bpy, self.drawn = bpy, drawn

    def _nested(self, *args, **kwargs):
        return RecordingLayout(self.bpy, self.drawn)

    row = column = box = _nested

    def label(self, text="", icon="NONE"):
        self.drawn.append(("label", text, icon))

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, f"{data!r} has no property {name!r}"
        self.drawn.append(("prop", name, ""))

    def operator(self, idname, **kwargs):
        group, name = idname.split(".")
        assert hasattr(getattr(self.bpy.ops, group), name), f"no operator {idname}"
        self.drawn.append(("operator", idname, ""))
        return SimpleNamespace()

    def progress(self, text="", factor=0.0, type="BAR"):
        assert 0.0 <= factor <= 1.0
        self.drawn.append(("progress", text, ""))


def draw_panel(bpy, panel) -> list:
    drawn = []
    panel.draw(SimpleNamespace(layout=RecordingLayout(bpy, drawn)), bpy.context)
    return drawn


def test_the_panels_draw_every_control_where_it_works(bpy, addon, inputs):
    job = generate(bpy, addon)
    running = addon.jobs.Job("generate", "busy", "Scene", Path("."), state="running", stage="stage1", step=3,
                             total=25, progress=0.1, eta_s=75.0)
    failed = addon.jobs.Job("segment", "broken", "Scene", Path("."), state="failed", message="it broke", hint="fix")
    cancelled = addon.jobs.Job("generate", "stopped", "Scene", Path("."), state="cancelled")
    for fake in (running, failed, cancelled):
        addon.pump.RUNTIME.jobs[fake.key] = fake
        addon.history.save(bpy.context.scene, fake)
    addon.pump.RUNTIME.health = {"state": "ready", "device": "cpu", "model": "tiny", "models": None,
                                 "segment": {"available": False}}
    addon.pump.RUNTIME.health_checked = time.time()
    assert counted_objects(bpy, addon, inputs.labels) == 2
    select_only(bpy, instances(bpy, addon, job)[1])
    drawn_by = {}
    for panel in (addon.panel.VIEW3D_PT_iscene, addon.panel.IMAGE_PT_iscene):
        drawn = drawn_by[panel.bl_space_type] = draw_panel(bpy, panel)
        texts = [text for kind, text, _ in drawn if kind in ("label", "progress")]
        assert "Ready: tiny on cpu" in texts and "2 objects in the label map" in texts
        assert "Layout 3/25 · ETA 1:15" in texts and "fix" in texts and "Cancelled" in texts
        assert ("label", "it broke", "ERROR") in drawn, "errors carry the ERROR icon"
        assert {("operator", "iscene.generate", ""), ("operator", "iscene.cancel", ""),
                ("operator", "iscene.retry", ""), ("operator", "iscene.copy_error", ""),
                ("operator", "iscene.reimport", ""), ("operator", "iscene.remove_job", "")} <= set(drawn)
    image_editor, view_3d = set(drawn_by["IMAGE_EDITOR"]), set(drawn_by["VIEW_3D"])
    assert any("pip install iscene-server[segment]" in entry[1] for entry in image_editor)
    segmenting = {("operator", "iscene.segment", ""), ("prop", "show_overlay", ""), ("prop", "overlay_opacity", "")}
    assert segmenting <= image_editor and not segmenting & view_3d, "segmenting works in the Image Editor only"
    editing = {("operator", "iscene.regenerate", ""), ("operator", "iscene.refine", ""), ("prop", "iscene_locked", ""),
               ("prop", "iscene_seed", ""), ("operator", "iscene.randomize_seed", ""),
               ("operator", "iscene.set_size", "")}
    assert editing <= view_3d and not editing & image_editor, "the 3D View's panel edits the selected objects"
    assert any(entry[1].startswith("Scene camera: living_room_camera, 320×240") for entry in view_3d), view_3d
