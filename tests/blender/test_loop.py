"""The artist's loop, second pass (issue 11): never freezes, lands at the right place and size, keeps edits
wherever the objects went, remembers its jobs, manages its server and explains every grey button. The
installed extension drives a real ``iscene-server`` (tiny package); the pump is called as Blender's timer would.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import socket
import sys
import time

import numpy as np
import pytest
import tomllib
from server_process import free_port

from .conftest import MANIFEST
from .test_addon import (
    RecordingLayout,
    counted_objects,
    draw_panel,
    generate,
    instances,
    manifest_bounds,
    move_in_world,
    pump_until,
    reimport,
    run_operator,
    scene_root,
    scene_to_world,
    select_only,
    translation,
    world_bounds,
)


def both_panels(addon):
    return (addon.panel.VIEW3D_PT_iscene, addon.panel.IMAGE_PT_iscene)


def world_vertices(obj) -> np.ndarray:
    local = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", local)
    return (np.c_[local.reshape(-1, 3), np.ones(len(local) // 3)] @ np.array(obj.matrix_world).T)[:, :3]


def rotation_z(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


def matrix(bpy_obj_matrix_type, array: np.ndarray):
    return bpy_obj_matrix_type(array.tolist())


def expected_edit(root, obj) -> np.ndarray:
    """The edit in the scene frame, from the stored scale, anchor and generated matrix (numpy, not the add-on)."""
    scale = float(root["iscene_scale"])
    generated = np.array(obj["iscene_generated"], float).reshape(4, 4)
    return (np.linalg.inv(scene_to_world(root)) @ np.array(obj.matrix_world) @ np.diag([scale, scale, scale, 1])
            @ np.linalg.inv(generated))


# --- 1. never freeze -------------------------------------------------------------------------------------------

class PixelReads:
    """Records every pixel read: the add-on's reader, and any foreach_get / foreach_set made while profiling."""

    def __init__(self, addon, monkeypatch):
        self.reads, self.calls, real = [], [], addon.pixels.read_pixels

        def read(image):
            self.reads.append(image.name)
            return real(image)

        monkeypatch.setattr(addon.pixels, "read_pixels", read)

    def profile(self, frame, event, arg):
        if event == "c_call" and getattr(arg, "__name__", "") in ("foreach_get", "foreach_set"):
            self.calls.append(arg.__name__)

    def draw(self, bpy, addon) -> list:
        drawn = []
        sys.setprofile(self.profile)
        try:
            for panel in both_panels(addon):
                drawn += draw_panel(bpy, panel)
        finally:
            sys.setprofile(None)
        return drawn


class FakeClock:
    """Stands in for the ``time`` module of :mod:`.pixels`: it moves only when the test moves it."""

    def __init__(self):
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now


def test_draw_reads_no_pixels_and_counts_are_refreshed_off_the_draw_path(bpy, addon, prefs, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(addon.pixels, "time", clock)
    settings = bpy.context.scene.iscene
    labels = bpy.data.images.new("painted_labels", 4000, 3000)
    pixels = np.zeros((3000, 4000, 4), np.float32)
    pixels[..., 3] = 1
    pixels[100:900, 200:1500, :3] = (0.8, 0.1, 0.1)
    pixels[1000:2000, 2000:3500, :3] = (0.1, 0.1, 0.8)
    labels.pixels.foreach_set(pixels.ravel())  # what painting does: the map is dirty, unsaved
    assert labels.is_dirty
    settings.image, settings.labels = bpy.data.images.new("photo", 4000, 3000), labels
    reads = PixelReads(addon, monkeypatch)

    drawn = reads.draw(bpy, addon)
    assert reads.reads == [] and reads.calls == [], "draw() reads no pixels"
    assert ("label", "Counting the objects…", "TIME") in drawn
    assert bpy.app.timers.is_registered(addon.props.refresh_label_stats), "the count is on its way"

    assert addon.props.refresh_label_stats() == addon.props.REFRESH_EVERY  # what Blender's timer runs
    assert reads.reads == ["painted_labels"]
    addon.props.LABEL_STATS.wait()
    addon.props.refresh_label_stats()
    drawn = reads.draw(bpy, addon)
    assert ("label", "2 objects in the label map", "OBJECT_DATA") in drawn and reads.calls == []

    pixels[2500:2600, 100:200, :3] = (0.1, 0.9, 0.1)  # another stroke
    labels.pixels.foreach_set(pixels.ravel())
    addon.props.refresh_label_stats()
    assert reads.reads == ["painted_labels"], "while painting, at most one read per refresh interval"
    clock.now += addon.pixels.REFRESH_S
    addon.props.refresh_label_stats()
    assert reads.reads == ["painted_labels"] * 2, "read again once the interval has passed"
    addon.props.LABEL_STATS.wait()
    addon.props.refresh_label_stats()
    assert ("label", "3 objects in the label map", "OBJECT_DATA") in reads.draw(bpy, addon), "it follows the paint"


def test_an_unchanged_map_is_read_once(bpy, addon, inputs, monkeypatch):
    reads = PixelReads(addon, monkeypatch)
    monkeypatch.setattr(addon.pixels, "REFRESH_S", 0.0)
    for _ in range(3):
        assert counted_objects(bpy, addon, inputs.labels) == 2
    assert reads.reads.count(inputs.labels.name) == 1, "a saved map's pixels are read when they change only"


@pytest.mark.parametrize("colour_space", ["Non-Color", "sRGB"])
def test_a_16_bit_label_map_counts_the_objects_the_server_reads(bpy, addon, prefs, tmp_path, colour_space):
    """Blender holds a 16-bit PNG as float pixels (linearised unless Non-Color); counting them as 8-bit values
    merged ids 1 and 2 into the background and ids 1000 and 1001 into one."""
    from PIL import Image

    ids = np.zeros((32, 48), np.uint16)
    ids[0:8, 0:8], ids[0:8, 16:24], ids[16:24, 0:8], ids[16:24, 16:24], ids[28:, 40:] = 1, 2, 300, 1000, 1001
    Image.fromarray(ids).save(tmp_path / "labels16.png")  # Pillow: mode I;16, as the server reads it
    labels = bpy.data.images.load(str(tmp_path / "labels16.png"))
    labels.colorspace_settings.name = colour_space
    assert labels.is_float, "Blender holds a 16-bit PNG as floats"
    assert counted_objects(bpy, addon, labels) == 5
    assert addon.props.label_stats(labels).ids == (1, 2, 300, 1000, 1001)


# --- 2, 3, 9. metric, grounded, the camera, colour -----------------------------------------------------------

def test_a_scene_stands_on_the_cursor_in_metres_with_its_camera_and_colours(bpy, addon, inputs, server):
    scene = bpy.context.scene
    startup_camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(startup_camera)
    scene.camera = startup_camera
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080
    scene.cursor.location = (1.0, -2.0, 0.75)
    inputs.room_width = 5.0
    job = generate(bpy, addon)
    manifest = server.get(f"/v1/jobs/{job.server_id}/scene")
    root = scene_root(bpy, addon, job)
    assert np.allclose(np.array(root.matrix_world), translation(1.0, -2.0, 0.75)), "unscaled, at the cursor"
    objects = instances(bpy, addon, job)
    bounds = np.array([world_bounds(o) for o in objects.values()])
    lo, hi = bounds[:, 0].min(0), bounds[:, 1].max(0)
    assert abs(lo[2] - 0.75) < 1e-4, "the floor is on the cursor"
    assert abs(max(hi[0] - lo[0], hi[1] - lo[1]) - 5.0) < 1e-3, "Room Width wide"
    assert np.allclose((lo[:2] + hi[:2]) / 2, (1.0, -2.0), atol=1e-4)
    box_lo = np.min([e["bbox"]["min"] for e in manifest["instances"]], axis=0)
    box_hi = np.max([e["bbox"]["max"] for e in manifest["instances"]], axis=0)
    scale = 5.0 / max(box_hi[0] - box_lo[0], box_hi[1] - box_lo[1])
    assert root["iscene_scale"] == pytest.approx(scale)
    for entry in manifest["instances"]:
        obj = objects[entry["label"]]
        assert np.allclose(world_bounds(obj), manifest_bounds(entry, root), atol=1e-4)
        assert np.allclose(obj.matrix_world.to_scale(), (1, 1, 1), atol=1e-6), "transform fields read metres"
        origin = (np.array(entry["bbox"]["origin"]) - [(box_lo[0] + box_hi[0]) / 2, (box_lo[1] + box_hi[1]) / 2,
                                                      box_lo[2]]) * scale
        assert np.allclose(np.array(obj.location), origin, atol=1e-5), "the location is metres from the root"
        colours = np.empty(len(obj.data.vertices) * 4, np.float32)
        obj.data.color_attributes["Color"].data.foreach_get("color", colours)
        mean = colours.reshape(-1, 4)[:, :3].mean(0)
        assert np.allclose(obj.color[:3], mean, atol=1e-4), "Solid mode's Object colour"
        assert np.allclose(obj.active_material.diffuse_color[:3], mean, atol=1e-4), "... and Material colour"
    assert objects[1].active_material != objects[4].active_material

    camera = bpy.data.objects["living_room_camera"]
    assert scene.camera == camera, "the solved camera replaces the startup camera"
    assert (scene.render.resolution_x, scene.render.resolution_y) == (320, 240), "the image's resolution"
    assert np.allclose(camera.matrix_world.to_scale(), (1, 1, 1), atol=1e-5)
    assert camera.data.ortho_scale == pytest.approx(manifest["camera"]["blender"]["ortho_scale"] * scale)

    inputs.make_camera_active = False
    scene.camera = startup_camera
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080
    generate(bpy, addon)
    assert scene.camera == startup_camera and (scene.render.resolution_x, scene.render.resolution_y) == (1920, 1080)


# --- 2, 4. Set Size keeps every edit; Refine finds tidied objects and sends edits in the scene frame --------

def test_set_size_keeps_every_edit_and_refine_sends_them_exactly(bpy, addon, inputs, server):
    scene = bpy.context.scene
    scene.cursor.location = (0.5, 0.5, 0.0)
    job = generate(bpy, addon)
    root = scene_root(bpy, addon, job)
    objects = instances(bpy, addon, job)
    table, plant = objects[1], objects[4]
    world = type(table.matrix_world)
    table.matrix_world = (matrix(world, translation(0.3, -0.1, 0.0)) @ table.matrix_world
                          @ matrix(world, rotation_z(30.0)) @ world.Scale(1.2, 4))  # moved, turned, scaled
    shelf = bpy.data.collections.new("My furniture")  # the artist tidies the plant away
    scene.collection.children.link(shelf)
    for collection in plant.users_collection:
        collection.objects.unlink(plant)
    shelf.objects.link(plant)
    holder = bpy.data.objects.new("holder", None)
    shelf.objects.link(holder)
    holder.location = (2.0, 0.0, 0.0)
    bpy.context.view_layer.update()
    kept = plant.matrix_world.copy()
    plant.parent = holder
    plant.matrix_world = kept
    move_in_world(plant, 0.0, 0.4, 0.0)
    plant.name = "my plant"
    bpy.context.view_layer.update()
    scale = float(root["iscene_scale"])
    edits = {label: expected_edit(root, obj) for label, obj in objects.items()}
    assert np.allclose(edits[4], translation(0.0, 0.4 / scale, 0.0), atol=1e-6)
    camera = bpy.data.objects["living_room_camera"]
    before = {obj.name: world_vertices(obj) for obj in objects.values()}
    camera_before, ortho_before = np.array(camera.matrix_world.translation), camera.data.ortho_scale

    select_only(bpy, plant)
    height = plant.dimensions.z
    assert bpy.ops.iscene.set_size(dimension="HEIGHT", size=height * 1.5) == {"FINISHED"}
    bpy.context.view_layer.update()
    assert plant.dimensions.z == pytest.approx(height * 1.5, rel=1e-5)
    assert root["iscene_scale"] == pytest.approx(scale * 1.5)
    pivot = np.array(root.matrix_world.translation)
    for obj in objects.values():
        assert np.allclose(world_vertices(obj), pivot + 1.5 * (before[obj.name] - pivot), atol=1e-4)
        assert np.allclose(expected_edit(root, obj), edits[int(obj["iscene_label"])], atol=1e-5), "edits kept"
    assert np.allclose(np.array(camera.matrix_world.translation), pivot + 1.5 * (camera_before - pivot), atol=1e-5)
    assert camera.data.ortho_scale == pytest.approx(ortho_before * 1.5)

    inputs.refine_selected, inputs.strength = False, 0.5
    select_only(bpy, plant)
    refined = run_operator(addon, bpy.ops.iscene.refine)
    assert refined.state == "succeeded", refined.message
    params = server.get(f"/v1/jobs/{refined.server_id}")["params"]
    assert sorted(params["transforms"]) == ["1", "4"] and params["locked"] == []
    for label, edit in edits.items():
        assert np.allclose(np.array(params["transforms"][str(label)]), edit, atol=1e-5), f"object {label}"
    manifest = server.get(f"/v1/jobs/{refined.server_id}/scene")
    changed = set(manifest["refine"]["resampled"]) | set(manifest["refine"]["moved_only"])
    assert changed == {1, 4}
    plant = bpy.data.objects["my plant"]
    assert plant["iscene_job"] == refined.server_id and plant.parent == holder and shelf in plant.users_collection
    for entry in manifest["instances"]:
        obj = objects[entry["label"]]
        assert addon.frames.is_identity(addon.frames.edit_in_scene(root, obj)), "the result holds the edit"
        assert np.allclose(world_bounds(obj), manifest_bounds(entry, root), atol=1e-4)


# --- 4, 6. per-object seeds; a duplicate regenerates as its own object --------------------------------------

def test_regenerate_uses_each_objects_seed_and_a_duplicate_is_its_own_object(bpy, addon, inputs, server):
    job = generate(bpy, addon)
    root = scene_root(bpy, addon, job)
    objects = instances(bpy, addon, job)
    table, plant = objects[1], objects[4]
    plant_mesh = plant["iscene_mesh_sha256"]
    move_in_world(table, 0.2, 0.0, 0.0)
    duplicate = table.copy()  # Shift+D: object and mesh copied, custom properties too
    duplicate.data = table.data.copy()
    table.users_collection[0].objects.link(duplicate)
    move_in_world(duplicate, 1.0, 0.5, 0.0)
    table.name = "dining table"
    bpy.context.view_layer.update()
    table.iscene_seed = 123
    select_only(bpy, duplicate)
    assert bpy.ops.iscene.randomize_seed() == {"FINISHED"}
    duplicate_seed = duplicate.iscene_seed
    assert duplicate_seed != duplicate["iscene_mesh_seed"] and table.iscene_seed == 123
    edits = {obj.name: expected_edit(root, obj) for obj in (table, duplicate)}

    select_only(bpy, table, duplicate)
    before = set(addon.pump.RUNTIME.jobs)
    assert bpy.ops.iscene.regenerate() == {"FINISHED"}
    started = [addon.pump.RUNTIME.jobs[key] for key in set(addon.pump.RUNTIME.jobs) - before]
    assert len(started) == 2, "one label twice: one job each, so each gets its own shape"
    pump_until(addon, lambda: not any(j.active for j in started))
    assert all(j.state == "succeeded" for j in started), [j.message for j in started]
    seeds = {}
    for regenerated in started:
        params = server.get(f"/v1/jobs/{regenerated.server_id}")["params"]
        assert params["labels"] == [1]
        entry = next(e for e in server.get(f"/v1/jobs/{regenerated.server_id}/scene")["instances"] if e["label"] == 1)
        digest = hashlib.sha256((regenerated.folder / entry["file"]).read_bytes()).hexdigest()
        seeds[params["seeds"]["1"]] = (regenerated.server_id, digest)
    assert set(seeds) == {123, duplicate_seed}
    table, duplicate = bpy.data.objects["dining table"], bpy.data.objects[duplicate.name]
    for obj, seed in ((table, 123), (duplicate, duplicate_seed)):
        assert obj["iscene_mesh_seed"] == obj.iscene_seed == seed
        assert (obj["iscene_job"], obj["iscene_mesh_sha256"]) == seeds[seed]
        assert np.allclose(expected_edit(root, obj), edits[obj.name], atol=1e-5), "its edit is kept"
    assert table.data != duplicate.data and plant["iscene_mesh_sha256"] == plant_mesh


# --- 5. history ---------------------------------------------------------------------------------------------

def test_history_is_saved_merged_with_the_server_removable_and_capped(bpy, addon, inputs, prefs, server, tmp_path):
    job = generate(bpy, addon)
    files = {path.name for path in job.folder.iterdir()}
    assert {"scene.json", "scene.glb", "instance_1.glb", "instance_4.glb"} <= files
    assert json.loads((job.folder / "scene.json").read_text()) == server.get(f"/v1/jobs/{job.server_id}/scene")
    scene = bpy.context.scene
    record = addon.history.find(scene, job.key)
    assert record is not None, [(r.key, r.server_id, r.kind) for r in scene.iscene.history] + [job.key]
    assert record.state == "succeeded" and record.server_id == job.server_id

    path = tmp_path / "saved.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_homefile(use_empty=True)
    assert not bpy.context.scene.iscene.history
    bpy.ops.wm.open_mainfile(filepath=str(path))
    scene = bpy.context.scene
    record = addon.history.find(scene, job.key)
    assert record is not None and record.server_id == job.server_id, "the history is stored in the .blend"

    history = scene.iscene.history
    assert bpy.ops.iscene.refresh_jobs() == {"FINISHED"}
    server_jobs = server.get("/v1/jobs")["jobs"]
    pump_until(addon, lambda: {j["job_id"] for j in server_jobs} <= {r.server_id for r in history}, timeout=30)
    server_records = [r.server_id for r in history if r.kind != "import"]  # a re-import names the job it fetched
    assert sorted(server_records) == sorted(set(server_records)), "no server job listed twice"
    generated = next(r for r in history if r.kind == "generate" and r.server_id)
    assert generated.title.startswith("Generate · living_room") and "seed 7" in generated.title

    second = reimport(bpy, addon, job.server_id)
    assert len(addon.history.visible(scene)) >= 2
    record = addon.history.find(scene, job.key)  # collections move their items when they grow
    folder = job.folder
    assert bpy.ops.iscene.remove_job(key=record.key) == {"FINISHED"}
    assert record.hidden and not folder.exists() and record not in addon.history.visible(scene)
    count = len(history)
    bpy.ops.iscene.refresh_jobs()
    addon.pump.RUNTIME.wait()  # the server's list has arrived
    addon.pump.pump_once()
    assert len(history) == count and addon.history.find(scene, job.key).hidden, "a removed job stays removed"
    assert bpy.ops.iscene.clear_jobs() == {"FINISHED"}
    assert addon.history.visible(scene) == [] and not second.folder.exists()

    jobs_dir = addon.preferences.user_dir("jobs")
    old = []
    for i, name in enumerate(("old-a", "old-b", "busy")):
        fake = jobs_dir / name
        fake.mkdir()
        (fake / "instance_1.glb").write_bytes(b"\0" * 400_000)
        os.utime(fake, (1_000_000 + i, 1_000_000 + i))  # older than anything real
        old.append(fake)
    busy = addon.jobs.Job("generate", "busy", scene.name, old[2], state="running")
    addon.pump.RUNTIME.jobs[busy.key] = busy
    try:
        prefs.download_limit_gb = 0.0005  # about 537 kB
        again = reimport(bpy, addon, job.server_id)
    finally:
        del addon.pump.RUNTIME.jobs[busy.key]
    assert not old[0].exists() and not old[1].exists(), "the oldest go first"
    assert old[2].exists(), "never the files of a job in use"
    assert (again.folder / "scene.glb").is_file(), "nor those of the job just downloaded"


# --- 7. the local server --------------------------------------------------------------------------------------

def test_urls_are_normalised_or_refused_with_the_fix(bpy, addon, prefs):
    normalise = addon.client.normalise_url
    assert normalise(" localhost:8712 ") == "http://localhost:8712"
    assert normalise("http://127.0.0.1:8712/v1") == "http://127.0.0.1:8712"
    assert normalise("https://gpu.example.com/iscene/v1/") == "https://gpu.example.com/iscene"
    for text, words in (("", "no server URL"), ("ftp://host", "http:// or https://"), ("http://host:abc", "port"),
                        ("http://", "no host")):
        with pytest.raises(ValueError, match=words):
            normalise(text)
    prefs.server_url = "127.0.0.1:8712/v1/"
    assert prefs.server_url == "http://127.0.0.1:8712", "the field shows the URL as used"
    prefs.server_url = "ftp://host"
    assert addon.panel.health_line(bpy.context) == ("ERROR", addon.preferences.network_problem("ftp://host"))
    with pytest.raises(RuntimeError, match="http:// or https://"):
        bpy.ops.iscene.check_server()


class WithLayout:
    """The preferences with a recording layout (what ``AddonPreferences.draw`` sees as ``self``)."""

    def __init__(self, prefs, layout):
        self.prefs, self.layout = prefs, layout

    def __getattr__(self, name):
        return getattr(self.prefs, name)


def draw_preferences(bpy, addon, prefs) -> list:
    drawn = []
    addon.panel.draw_preferences(WithLayout(prefs, RecordingLayout(bpy, drawn)), bpy.context)
    return drawn


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout} s")
        time.sleep(0.2)


PORT_TAKEN = "address already in use"  # what the server logs when another process holds its port
PORT_ATTEMPTS = 3


def start_local_server(bpy, addon, prefs, command: str) -> int:
    """Click Start Local Server with the URL on a free port and wait until the server answers ready.

    The feature under test starts the server on the URL's port, so the port is chosen here, not bound by the
    server itself; if another process takes it between the choice and the server's bind, the server says so in
    its log and exits, and a new port is tried."""
    local, runtime = addon.server.LocalServer, addon.pump.RUNTIME

    def ready() -> bool:
        if not runtime._health_thread or not runtime._health_thread.is_alive():
            runtime.check_health(addon.preferences.client(bpy.context))
        addon.pump.pump_once()
        return runtime.health is not None and runtime.health["state"] == "ready"

    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        prefs.server_url, prefs.server_command = f"127.0.0.1:{port}", command
        assert bpy.ops.iscene.start_server() == {"FINISHED"}
        assert local.state(ready=False) == ("TIME", f"Starting on port {port}…")
        wait_for(lambda: local.process.poll() is not None or ready())
        if local.running():
            return port
        if PORT_TAKEN not in local.log_path.read_text(errors="replace").lower():
            raise AssertionError(f"the local server exited: {local.log_path.read_text(errors='replace')[-2000:]}")
    raise AssertionError(f"every one of {PORT_ATTEMPTS} free ports was taken before the server could bind it")


def test_the_local_server_uses_the_urls_port_shows_its_state_and_stops_with_blender(
        bpy, addon, prefs, server, tiny_package, tmp_path, monkeypatch):
    local = addon.server.LocalServer
    recorded = []
    addon.server.unregister()
    with monkeypatch.context() as patch:
        patch.setattr(atexit, "register", recorded.append)
        addon.server.register()
    addon.server.register()
    assert recorded == [addon.server.stop_on_quit], "Blender's exit stops the server it started"

    command = (f'"{sys.executable}" -m iscene_server.cli serve --model "{tiny_package}" '
               f'--data-dir "{tmp_path / "data"}" --device cpu')
    with pytest.raises(RuntimeError, match="has not started a server"):
        bpy.ops.iscene.stop_server()
    try:
        port = start_local_server(bpy, addon, prefs, command)
        assert local.state(ready=True) == ("CHECKMARK", f"Ready on port {port}")
        drawn = draw_preferences(bpy, addon, prefs)
        assert ("label", f"Ready on port {port}", "CHECKMARK") in drawn
        assert {("operator", "iscene.start_server", ""), ("operator", "iscene.open_log", "")} <= set(drawn)
        assert local.log_path.is_file() and bpy.ops.iscene.open_log.poll()
        with pytest.raises(RuntimeError, match="already running"):
            bpy.ops.iscene.start_server()
    finally:
        addon.server.stop_on_quit()  # what Blender runs when it quits
    assert local.process.poll() is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert local.state(ready=False)[1].startswith("Exited (code")
    assert server.get("/v1/health")["service"] == "iscene", "a server Blender did not start is left alone"

    prefs.server_command = f'"{sys.executable}" -c "import sys; sys.exit(3)"'
    assert bpy.ops.iscene.start_server() == {"FINISHED"}
    wait_for(lambda: local.process.poll() is not None, timeout=30)
    assert local.state(ready=False) == ("ERROR", "Exited (code 3): see the log")


# --- 8. explain ---------------------------------------------------------------------------------------------

def rna_properties(rna):
    return [p for p in getattr(rna, "bl_rna", rna).properties if p.identifier != "rna_type"]


def test_every_operator_says_why_it_is_grey_and_every_control_has_a_tooltip(bpy, addon, prefs):
    classes = [cls for module in addon.OPERATOR_MODULES for cls in module.CLASSES]
    assert {cls.bl_idname for cls in classes} == {f"iscene.{name}" for name in dir(bpy.ops.iscene)}
    for cls in classes:
        assert issubclass(cls, addon.problems.Gated) and cls.poll.__func__ is addon.problems.Gated.poll.__func__
        assert cls is addon.operators.ISCENE_OT_load_label_map or "problem" in cls.__dict__, cls.__name__
        rna = getattr(bpy.ops.iscene, cls.bl_idname.split(".")[1]).get_rna_type()
        assert rna.description.strip(), f"{cls.__name__} has no tooltip"
        for prop in rna_properties(rna):
            assert prop.description.strip(), f"{cls.__name__}.{prop.identifier} has no tooltip"
    for cls, base in [(c, bpy.types.PropertyGroup) for c in addon.props.CLASSES] + [
            (type(prefs), bpy.types.AddonPreferences)]:
        inherited = set(base.bl_rna.properties.keys())
        for prop in rna_properties(cls):
            assert prop.identifier in inherited or prop.description.strip(), f"{cls.__name__}.{prop.identifier}"
    for name in ("iscene_seed", "iscene_locked"):
        assert bpy.types.Object.bl_rna.properties[name].description.strip()

    for operator, words in ((bpy.ops.iscene.generate, "choose an image"),
                            (bpy.ops.iscene.regenerate, "select objects of a generated scene"),
                            (bpy.ops.iscene.refine, "select an object of a generated scene"),
                            (bpy.ops.iscene.set_size, "make a generated object active"),
                            (bpy.ops.iscene.cancel, "no job is running"),
                            (bpy.ops.iscene.copy_error, "no job failed"),
                            (bpy.ops.iscene.clear_jobs, "the job list is empty"),
                            (bpy.ops.iscene.stop_server, "has not started")):
        with pytest.raises(RuntimeError, match=words):
            operator()

    settings = bpy.context.scene.iscene
    settings.image = bpy.data.images.new("photo", 64, 48)
    settings.labels = bpy.data.images.new("empty map", 64, 48)
    assert counted_objects(bpy, addon, settings.labels) == 0
    with pytest.raises(RuntimeError, match="the label map has no objects"):
        bpy.ops.iscene.generate()
    drawn = draw_panel(bpy, addon.panel.VIEW3D_PT_iscene)
    assert ("label", "0 objects in the label map", "ERROR") in drawn

    manifest = tomllib.loads(MANIFEST.read_text())
    assert manifest["permissions"]["clipboard"] and manifest["website"].startswith("https://")


def test_artist_words_for_stages_counts_and_long_hints(bpy, addon):
    wording = addon.wording
    assert wording.progress_text("running", "stage1", 3, 25, None, None) == "Layout 3/25"
    assert wording.progress_text("running", "stage2", 3, 25, None, 75.0) == "Shapes 3/25 · ETA 1:15"
    assert wording.progress_text("running", "meshes", 2, 5, None, None) == "Building meshes 2/5"
    assert wording.progress_text("queued", "", 0, 0, 2, None) == "Waiting (#2 in queue)"
    assert (wording.plural(1, "object"), wording.plural(2, "object")) == ("1 object", "2 objects")
    hint = "start it with `iscene-server serve` (or Start Local Server in the preferences) and check the server URL"
    narrow, wide = wording.wrap(hint, 220), wording.wrap(hint, 900)
    assert len(narrow) > len(wide) == 1 and " ".join(narrow) == hint
    assert max(map(len, narrow)) * wording.CHAR_PX <= 220


# --- 10. names ----------------------------------------------------------------------------------------------

def test_label_names_name_the_objects(bpy, addon, inputs, server):
    assert counted_objects(bpy, addon, inputs.labels) == 2
    entries = {entry.label: entry for entry in inputs.label_names}
    assert sorted(entries) == [1, 4], "a name field per object of the map"
    entries[1].name, entries[4].name = "table", " plant "
    inputs.show_names = True
    drawn = draw_panel(bpy, addon.panel.VIEW3D_PT_iscene)
    assert drawn.count(("prop", "name", "")) == 2
    job = generate(bpy, addon)
    names = sorted(obj.name for obj in instances(bpy, addon, job).values())
    assert names == ["living_room_plant", "living_room_table"]
