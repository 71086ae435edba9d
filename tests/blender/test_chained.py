"""Jobs on one scene in a row: a job that derives from the scene's latest server job (regenerate, refine, build,
variants) waits while another job is changing that scene and then starts from that job's result, so a quick
second Regenerate (or a Refine right after one) never drops the first one's change on the server.
A real ``iscene-server`` (tiny package) runs the jobs.
"""

from __future__ import annotations

from .test_addon import generate, instances, pump_until, scene_root, select_only


def regenerate(bpy, addon, obj):
    """Click Regenerate Selected for ``obj``; returns the job it started (not pumped)."""
    select_only(bpy, obj)
    before = set(addon.pump.RUNTIME.jobs)
    assert bpy.ops.iscene.regenerate() == {"FINISHED"}
    (key,) = set(addon.pump.RUNTIME.jobs) - before
    return addon.pump.RUNTIME.jobs[key]


def label_seed(server, job_id: str, label: int) -> int:
    return next(e for e in server.get(f"/v1/jobs/{job_id}/scene")["instances"] if e["label"] == label)["seed"]


def test_a_second_regenerate_waits_for_the_first_and_keeps_its_change(bpy, addon, inputs, server):
    scene_job = generate(bpy, addon)
    root = scene_root(bpy, addon, scene_job)
    objects = instances(bpy, addon, scene_job)
    table, plant = objects[1], objects[4]
    table.iscene_seed, plant.iscene_seed = 123, 456
    first = regenerate(bpy, addon, table)
    second = regenerate(bpy, addon, plant)
    assert second.state == "waiting" and second.after == first.title and second.server_id is None
    text = addon.wording.progress_text(second.state, "", 0, 0, None, None, second.after)
    assert text == f"After {first.title}", "the Jobs list says what it waits for"
    pump_until(addon, lambda: not first.active and not second.active)
    assert (first.state, second.state) == ("succeeded", "succeeded"), (first.message, second.message)
    assert server.get(f"/v1/jobs/{first.server_id}")["parent"] == scene_job.server_id
    assert server.get(f"/v1/jobs/{second.server_id}")["parent"] == first.server_id, "started from the first's result"
    assert (label_seed(server, second.server_id, 1), label_seed(server, second.server_id, 4)) == (123, 456)
    assert root["iscene_job"] == second.server_id, "the scene's next job starts from both changes"
    assert (table["iscene_mesh_seed"], plant["iscene_mesh_seed"]) == (123, 456)


def test_a_waiting_job_cancelled_never_reaches_the_server(bpy, addon, inputs, server):
    scene_job = generate(bpy, addon)
    objects = instances(bpy, addon, scene_job)
    known = {j["job_id"] for j in server.get("/v1/jobs")["jobs"]}
    first = regenerate(bpy, addon, objects[1])
    second = regenerate(bpy, addon, objects[4])
    plant_mesh = objects[4]["iscene_mesh_sha256"]
    assert second.state == "waiting"
    assert bpy.ops.iscene.cancel(key=second.key) == {"FINISHED"}
    addon.pump.pump_once()
    assert second.state == "cancelled" and second.server_id is None and not second.active
    pump_until(addon, lambda: not first.active)
    assert first.state == "succeeded"
    sent = {j["job_id"] for j in server.get("/v1/jobs")["jobs"]} - known
    assert sent == {first.server_id}, "only the first job was sent"
    assert objects[4]["iscene_mesh_sha256"] == plant_mesh
