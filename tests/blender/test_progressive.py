"""Progressive results in Blender (issue 15): the layout lands as wire proxies while the job runs, each proxy is
replaced in place by its mesh (the artist's edits kept, a deleted proxy not brought back), a cancelled job keeps
what it brought, a Layout Only scene becomes meshes with Build Meshes, and Refine works on a layout.

The installed extension drives a real ``iscene-server`` (tiny package); the pump is called as Blender's timer
would. Ordering is asserted through the events the pump applied (recorded by wrapping its ``_apply``), not
through sleeps.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from .test_addon import (
    draw_panel,
    manifest_bounds,
    move_in_world,
    pump_until,
    run_operator,
    scene_root,
    scene_to_world,
    select_only,
    start,
    world_bounds,
)
from .test_loop import expected_edit

SLOW_SHAPES = 40  # stage-2 steps: the layout is served well before the meshes
VERY_SLOW_SHAPES = 100  # long enough to cancel while stage 2 runs


class AppliedEvents:
    """Wraps the pump's ``_apply``: records the kind of every event it applied for a job, and runs a hook right
    after the first event of a kind (what the artist does between two pumps)."""

    def __init__(self, addon, monkeypatch):
        self.applied: list[tuple[str, str, dict]] = []
        self.hooks = {}
        real = addon.pump._apply

        def apply(event):
            real(event)
            self.applied.append((event.key, event.kind, event.data))
            hook = self.hooks.pop(event.kind, None)
            if hook is not None:
                hook(event)

        monkeypatch.setattr(addon.pump, "_apply", apply)

    def kinds(self, job) -> list[str]:
        return [kind for key, kind, _ in self.applied if key == job.key and kind != "update"]

    def data(self, job, kind: str) -> dict:
        return next(data for key, applied, data in self.applied if key == job.key and applied == kind)


def start_generate(bpy, addon, settings, slat_steps: int):
    """Generate Scene with a slow stage 2 (the request the button sends, with more shape steps)."""
    request = addon.job_requests.generate_request(settings)
    request.params["slat_steps"] = slat_steps
    return addon.launch.start_job(bpy.context, request)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scene_objects(addon, root) -> dict[int, list]:
    found: dict[int, list] = {}
    for obj in addon.provenance.instances(root):
        found.setdefault(int(obj["iscene_label"]), []).append(obj)
    return found


def check_fitted_to_meshes(root, manifest, room_width: float) -> None:
    """Sized from its layout while the meshes came, the finished scene is fitted as a whole import would be:
    Room Width wide over its meshes' boxes, their floor on the root."""
    lo = np.min([e["bbox"]["min"] for e in manifest["instances"]], axis=0)
    hi = np.max([e["bbox"]["max"] for e in manifest["instances"]], axis=0)
    assert root["iscene_scale"] == pytest.approx(room_width / max(hi[0] - lo[0], hi[1] - lo[1]))
    assert np.allclose(root["iscene_anchor"], [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], atol=1e-6)
    assert "iscene_fit_width" not in root


def check_proxy(addon, root, obj, entry, folder) -> None:
    """A proxy: marked, drawn as wire, its mesh the job's proxy file, its origin the manifest's (where the final
    mesh will be placed from)."""
    assert addon.provenance.is_proxy(obj) and obj.display_type == "WIRE"
    assert obj.parent == root and obj["iscene_seed"] == entry["seed"]
    assert obj["iscene_mesh_sha256"] == sha256(folder / entry["proxy"])
    origin = scene_to_world(root) @ np.r_[entry["origin"], 1.0]
    assert np.allclose(np.array(obj.matrix_world.translation), origin[:3], atol=1e-4), "the final objects' origin"
    assert np.allclose(obj.matrix_world.to_scale(), (1, 1, 1), atol=1e-6), "mesh data in metres"
    assert len(obj.data.polygons) <= 3000, "a light placeholder"


def test_the_layout_lands_as_proxies_and_each_mesh_replaces_its_proxy_keeping_edits(bpy, addon, inputs, server,
                                                                                      monkeypatch):
    events = AppliedEvents(addon, monkeypatch)
    seen = {}

    def artist_edits_the_layout(event):
        manifest = event.data["manifest"]
        job = last_started[0]
        root = scene_root(bpy, addon, job)
        objects = scene_objects(addon, root)
        seen["partial"], seen["stage"], seen["active"] = manifest.get("partial"), manifest.get("stage"), job.active
        seen["camera"] = bpy.data.objects.get("living_room_camera")
        entries = {e["label"]: e for e in manifest["instances"]}
        for label, (obj,) in objects.items():
            if entries[label].get("file") is None:
                check_proxy(addon, root, obj, entries[label], job.folder)
        table, plant = objects[1][0], objects[4][0]
        seen["proxies"] = sorted(o.name for o in (table, plant) if addon.provenance.is_proxy(o))
        move_in_world(table, 0.3, -0.1, 0.0)
        table.name, table.iscene_locked = "my table", True
        bpy.context.view_layer.update()
        seen["edit"] = expected_edit(root, table)
        bpy.data.objects.remove(plant)

    events.hooks["layout"] = artist_edits_the_layout
    bpy.ops.ed.undo_push(message="before generating")
    last_started = [start_generate(bpy, addon, inputs, SLOW_SHAPES)]
    job = last_started[0]
    pump_until(addon, lambda: not job.active)
    assert job.state == "succeeded", f"{job.message} ({job.hint})"

    kinds = events.kinds(job)
    assert kinds[0] == "layout" and kinds[-1] == "finished" and kinds.count("layout") == 1, kinds
    assert set(kinds[1:-1]) <= {"objects"}, kinds
    assert seen["partial"] is True and seen["active"], "the layout came from the running job's partial manifest"
    assert seen["camera"] is not None, "the camera arrives with the layout"
    assert seen["proxies"], "at least one object was still a proxy when the layout landed"
    status = server.get(f"/v1/jobs/{job.server_id}")
    server_events = [e["event"] for e in status["events"]]
    assert server_events[0] == "layout" and server_events.count("instance") == 2

    manifest = server.get(f"/v1/jobs/{job.server_id}/scene")
    assert "partial" not in manifest
    root = scene_root(bpy, addon, job)
    objects = scene_objects(addon, root)
    assert list(objects) == [1], "the deleted proxy is not brought back"
    (table,) = objects[1]
    entry = next(e for e in manifest["instances"] if e["label"] == 1)
    assert table.name == "my table" and table.iscene_locked, "renamed and locked: the same object"
    assert not addon.provenance.is_proxy(table) and table.display_type == "TEXTURED"
    assert table["iscene_mesh_sha256"] == sha256(job.folder / entry["file"])
    assert table["iscene_seed"] == table["iscene_mesh_seed"] == entry["seed"]
    assert len(table.data.polygons) == entry["faces"]
    assert np.allclose(expected_edit(root, table), seen["edit"], atol=1e-5), "the move made on the proxy is kept"
    assert root["iscene_job"] == job.server_id and root["iscene_stage"] == "meshes"
    check_fitted_to_meshes(root, manifest, inputs.room_width)

    bpy.ops.ed.undo()
    assert "I-Scene living_room" not in bpy.data.collections, "the whole job, proxies and meshes, is one undo step"


def test_cancel_after_the_layout_keeps_the_proxies(bpy, addon, inputs, server, monkeypatch):
    events = AppliedEvents(addon, monkeypatch)
    events.hooks["layout"] = lambda event: bpy.ops.iscene.cancel(key=event.key)
    job = start_generate(bpy, addon, inputs, VERY_SLOW_SHAPES)
    pump_until(addon, lambda: not job.active, timeout=120)
    assert job.state == "cancelled", f"{job.message} ({job.hint})"
    assert events.kinds(job)[0] == "layout" and events.kinds(job)[-1] == "cancelled"
    assert server.wait(job.server_id, timeout=60)["state"] == "cancelled"
    partial = server.get(f"/v1/jobs/{job.server_id}/scene")
    assert partial["partial"] is True and partial["stopped"] == "cancelled"
    root = scene_root(bpy, addon, job)
    objects = scene_objects(addon, root)
    assert sorted(objects) == [1, 4]
    for entry in partial["instances"]:
        (obj,) = objects[entry["label"]]
        if entry.get("file") is None:
            check_proxy(addon, root, obj, entry, job.folder)
        else:  # finished before the cancel: a cancelled job keeps what was finished
            assert obj["iscene_mesh_sha256"] == sha256(job.folder / entry["file"])
    assert "living_room_camera" in bpy.data.objects
    assert "iscene_stage" not in root, "not a layout scene: Build Meshes needs a finished layout job"
    select_only(bpy, objects[1][0])
    with pytest.raises(RuntimeError, match="not a layout"):
        bpy.ops.iscene.build_meshes()


def layout_scene(bpy, addon, inputs, server):
    """Generate with Layout Only: a finished layout job whose objects are all proxies."""
    inputs.layout_only = True
    job = run_operator(addon, bpy.ops.iscene.generate)
    assert job.state == "succeeded", f"{job.message} ({job.hint})"
    assert server.get(f"/v1/jobs/{job.server_id}")["params"]["until"] == "layout"
    manifest = server.get(f"/v1/jobs/{job.server_id}/scene")
    assert manifest["stage"] == "layout" and "partial" not in manifest
    root = scene_root(bpy, addon, job)
    objects = scene_objects(addon, root)
    for entry in manifest["instances"]:
        (obj,) = objects[entry["label"]]
        check_proxy(addon, root, obj, entry, job.folder)
    assert root["iscene_stage"] == "layout"
    return job, root, {label: objs[0] for label, objs in objects.items()}


def test_layout_only_then_build_meshes_turns_the_proxies_into_meshes_in_place(bpy, addon, inputs, server):
    layout, root, objects = layout_scene(bpy, addon, inputs, server)
    table, plant = objects[1], objects[4]
    select_only(bpy, plant)
    with pytest.raises(RuntimeError, match="Build Meshes first"):
        bpy.ops.iscene.variants(count=2)
    move_in_world(plant, -0.2, 0.1, 0.0)
    plant.name = "the plant"
    bpy.context.view_layer.update()
    edit = expected_edit(root, plant)

    job = start(bpy, addon, bpy.ops.iscene.build_meshes)
    with pytest.raises(RuntimeError, match="still changing this scene"):
        bpy.ops.iscene.build_meshes()
    pump_until(addon, lambda: not job.active)
    assert job.state == "succeeded", f"{job.message} ({job.hint})"
    status = server.get(f"/v1/jobs/{job.server_id}")
    assert status["kind"] == "build" and status["parent"] == layout.server_id

    manifest = server.get(f"/v1/jobs/{job.server_id}/scene")
    entries = {e["label"]: e for e in manifest["instances"]}
    for label, obj in ((1, table), (4, bpy.data.objects["the plant"])):
        assert obj == objects[label], "the same object"
        assert not addon.provenance.is_proxy(obj) and obj.display_type == "TEXTURED"
        assert obj["iscene_mesh_sha256"] == sha256(job.folder / entries[label]["file"])
        assert obj["iscene_job"] == job.server_id and len(obj.data.polygons) == entries[label]["faces"]
    assert np.allclose(expected_edit(root, plant), edit, atol=1e-5), "the proxy's edit is kept on its mesh"
    assert np.allclose(world_bounds(table), manifest_bounds(entries[1], root), atol=1e-4)
    assert root["iscene_job"] == job.server_id and root["iscene_stage"] == "meshes"
    check_fitted_to_meshes(root, manifest, inputs.room_width)
    with pytest.raises(RuntimeError, match="not a layout"):
        bpy.ops.iscene.build_meshes()


def test_refine_on_a_layout_moves_its_proxies_and_stays_a_layout(bpy, addon, inputs, server):
    _, root, objects = layout_scene(bpy, addon, inputs, server)
    plant, table = objects[4], objects[1]
    table_hash = table["iscene_mesh_sha256"]
    move_in_world(plant, 0.25, 0.0, 0.0)
    inputs.refine_selected, inputs.strength = False, 0.5
    select_only(bpy, plant)
    job = run_operator(addon, bpy.ops.iscene.refine)
    assert job.state == "succeeded", f"{job.message} ({job.hint})"
    manifest = server.get(f"/v1/jobs/{job.server_id}/scene")
    assert manifest["stage"] == "layout" and manifest["refine"]["moved_only"] == [4]
    entry = next(e for e in manifest["instances"] if e["label"] == 4)
    check_proxy(addon, root, plant, entry, job.folder)
    assert plant["iscene_job"] == job.server_id
    assert addon.frames.is_identity(addon.frames.edit_in_scene(root, plant)), "the new proxy holds the move"
    assert table["iscene_mesh_sha256"] == table_hash, "an unmoved proxy stays as it is"
    assert root["iscene_stage"] == "layout" and root["iscene_job"] == job.server_id
    select_only(bpy, plant)
    assert bpy.ops.iscene.build_meshes.poll(), "a refined layout can be built"


def test_regenerate_on_a_layout_gives_a_new_proxy_in_place(bpy, addon, inputs, server):
    _, root, objects = layout_scene(bpy, addon, inputs, server)
    table, plant = objects[1], objects[4]
    plant_hash = plant["iscene_mesh_sha256"]
    move_in_world(table, 0.0, 0.2, 0.0)
    bpy.context.view_layer.update()
    edit = expected_edit(root, table)
    table.iscene_seed = 4321
    select_only(bpy, table)
    job = run_operator(addon, bpy.ops.iscene.regenerate)
    assert job.state == "succeeded", f"{job.message} ({job.hint})"
    manifest = server.get(f"/v1/jobs/{job.server_id}/scene")
    assert manifest["stage"] == "layout"
    entry = next(e for e in manifest["instances"] if e["label"] == 1)
    assert entry["seed"] == 4321 and entry["file"] is None
    assert addon.provenance.is_proxy(table) and table.display_type == "WIRE"
    assert table["iscene_mesh_sha256"] == sha256(job.folder / entry["proxy"])
    assert table["iscene_seed"] == table["iscene_mesh_seed"] == 4321 and table["iscene_job"] == job.server_id
    assert np.allclose(expected_edit(root, table), edit, atol=1e-5), "the edit stays on the new proxy"
    assert plant["iscene_mesh_sha256"] == plant_hash
    assert root["iscene_stage"] == "layout"


def test_the_panel_offers_layout_only_build_meshes_and_variants_where_they_work(bpy, addon, inputs, server):
    objects = layout_scene(bpy, addon, inputs, server)[2]
    select_only(bpy, objects[1])
    drawn = set(draw_panel(bpy, addon.panel.VIEW3D_PT_iscene))
    assert {("prop", "layout_only", ""), ("operator", "iscene.build_meshes", ""),
            ("operator", "iscene.variants", "")} <= drawn
    with pytest.raises(RuntimeError, match="Build Meshes first"):
        bpy.ops.iscene.variants(count=2)


def test_an_object_finished_between_a_poll_and_its_manifest_lands_as_its_proxy_then_its_mesh(bpy, addon, inputs,
                                                                                             server, scene_pngs,
                                                                                             tmp_path):
    """A poll's status can be older than the manifest fetched right after it: an object may have finished in
    between (the status listed no finished object, the manifest already names its mesh). The layout still lands
    every object, that one as its proxy, and the next poll's objects event brings its mesh in place."""
    code, created = server.submit(scene_pngs[0].read_bytes(), scene_pngs[1].read_bytes(),
                                  {"steps": 2, "slat_steps": 2, "detail": "low"})
    assert code == 202
    final = server.wait(created["job_id"])
    assert final["state"] == "succeeded" and final["ready_labels"] == [1, 4]
    job = addon.jobs.Job(kind="generate", title="race", scene=bpy.context.scene.name, folder=tmp_path / "race",
                         state="running", server_id=created["job_id"])
    runtime = addon.pump.RUNTIME
    runtime.jobs[job.key] = job
    client, fetched = addon.preferences.client(), addon.jobs.Fetched()

    addon.jobs.fetch_progress(job, client, runtime.events, {"layout_ready": True, "ready_labels": []}, fetched)
    addon.pump.pump_once()
    root = scene_root(bpy, addon, job)
    objects = scene_objects(addon, root)
    assert sorted(objects) == [1, 4], "every object of the layout lands, finished or not"
    assert all(addon.provenance.is_proxy(obj) for (obj,) in objects.values())

    addon.jobs.fetch_progress(job, client, runtime.events, final, fetched)
    addon.pump.pump_once()
    manifest = server.get(f"/v1/jobs/{job.server_id}/scene")
    for entry in manifest["instances"]:
        (obj,) = scene_objects(addon, root)[entry["label"]]
        assert obj == objects[entry["label"]][0], "the same object: its proxy was replaced in place"
        assert not addon.provenance.is_proxy(obj)
        assert obj["iscene_mesh_sha256"] == sha256(job.folder / entry["file"])
