"""Variants in Blender (issue 15): K candidate shapes for one object, laid out beside it along the view's right;
Keep This One swaps the chosen shape into the object (its edits kept, the seed recorded) and removes the rest;
Discard Variants removes them all. A real ``iscene-server`` (tiny package) makes the candidates.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from server_process import free_port

from .test_addon import (
    generate,
    instances,
    move_in_world,
    pump_until,
    run_operator,
    scene_root,
    scene_to_world,
    select_only,
)
from .test_loop import expected_edit


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def face_corners(obj) -> np.ndarray:
    """``[F, 3, 3]`` the corners of the mesh's triangles in the object's own frame (independent of how the UV
    atlas split the vertices along its seams)."""
    positions = np.array([tuple(v.co) for v in obj.data.vertices])
    return positions[np.array([tuple(p.vertices) for p in obj.data.polygons])]


def surface_area(corners: np.ndarray) -> float:
    doubled = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # [F, 3]
    return float(np.linalg.norm(doubled, axis=1).sum() / 2)


def camera_right(bpy) -> np.ndarray:
    """Headless Blender has no 3D view: the candidates line up along the scene camera's right."""
    rotation = np.array(bpy.context.scene.camera.matrix_world)[:3, :3]
    right = rotation @ np.array([1.0, 0.0, 0.0])
    return right / np.linalg.norm(right)


def width_along(obj, axis: np.ndarray) -> float:
    corners = np.c_[np.array([list(c) for c in obj.bound_box]), np.ones(8)] @ np.array(obj.matrix_world).T
    spans = corners[:, :3] @ axis
    return float(spans.max() - spans.min())


def make_variants(bpy, addon, obj, count: int):
    select_only(bpy, obj)
    job = run_operator(addon, lambda: bpy.ops.iscene.variants(count=count))
    assert job.state == "succeeded", f"{job.message} ({job.hint})"
    return job


def test_variants_are_laid_out_beside_the_object_and_the_kept_one_is_swapped_in(bpy, addon, inputs, server):
    scene_job = generate(bpy, addon)
    root = scene_root(bpy, addon, scene_job)
    table = instances(bpy, addon, scene_job)[1]
    move_in_world(table, 0.2, 0.3, 0.0)
    table.name = "dining table"
    bpy.context.view_layer.update()
    edit, name, materials = expected_edit(root, table), table.name, [s.material for s in table.material_slots]
    axis, width = camera_right(bpy), width_along(table, camera_right(bpy))

    job = make_variants(bpy, addon, table, 3)
    status = server.get(f"/v1/jobs/{job.server_id}")
    assert status["kind"] == "variants" and status["params"]["label"] == 1 and len(status["params"]["seeds"]) == 3
    candidates = server.get(f"/v1/jobs/{job.server_id}/scene")["variants"]["candidates"]
    assert [c["seed"] for c in candidates] == status["params"]["seeds"]
    laid_out = addon.provenance.candidates_of(table)
    assert [o.name for o in laid_out] == [f"dining table v{k}" for k in (1, 2, 3)]
    scale = float(root["iscene_scale"])
    for obj, candidate in zip(laid_out, candidates, strict=True):
        k = candidate["index"]
        assert obj["iscene_candidate_index"] == k and obj["iscene_candidate_seed"] == candidate["seed"]
        assert obj["iscene_mesh_sha256"] == sha256(job.folder / candidate["file"])
        assert not addon.provenance.is_member(obj), "a candidate is no object of the scene (Refine never sees it)"
        assert len(obj.data.polygons) == candidate["faces"]
        generated = np.eye(4)
        generated[:3, 3] = candidate["bbox"]["origin"]
        in_place = scene_to_world(root) @ edit @ generated @ np.diag([1 / scale, 1 / scale, 1 / scale, 1])
        shift = np.eye(4)
        shift[:3, 3] = axis * width * addon.importer.CANDIDATE_GAP * k
        assert np.allclose(np.array(obj.matrix_world), shift @ in_place, atol=1e-4), f"candidate {k} beside it"
    assert {o.name for o in bpy.context.selected_objects} == {o.name for o in laid_out}

    chosen = laid_out[1]
    kept_seed, kept_hash = chosen["iscene_candidate_seed"], chosen["iscene_mesh_sha256"]
    polygons = len(chosen.data.polygons)
    kept_shape = face_corners(chosen)
    select_only(bpy, chosen)
    jobs_before, scene_before = set(addon.pump.RUNTIME.jobs), root["iscene_job"]
    assert bpy.ops.iscene.keep_variant() == {"FINISHED"}
    table = bpy.data.objects[name]
    assert addon.provenance.candidates_of(table) == [], "the other candidates are removed"
    assert not [o for o in bpy.data.objects if o.name.startswith("dining table v")]
    assert table["iscene_mesh_sha256"] == kept_hash and len(table.data.polygons) == polygons
    assert table["iscene_seed"] == table["iscene_mesh_seed"] == kept_seed, "the seed is recorded"
    assert table["iscene_job"] == job.server_id and table["iscene_variant"] == 2
    assert np.allclose(expected_edit(root, table), edit, atol=1e-5), "the object's edit is kept"
    assert [s.material for s in table.material_slots] == materials
    assert bpy.context.view_layer.objects.active == table
    with pytest.raises(RuntimeError, match="make a variant candidate active"):
        bpy.ops.iscene.keep_variant()

    # the kept shape becomes the server's too: a one-object regenerate with its seed, which later jobs start from
    (key,) = set(addon.pump.RUNTIME.jobs) - jobs_before
    keep = addon.pump.RUNTIME.jobs[key]
    pump_until(addon, lambda: not keep.active)
    assert keep.state == "succeeded", f"{keep.message} ({keep.hint})"
    status = server.get(f"/v1/jobs/{keep.server_id}")
    assert status["kind"] == "regenerate" and status["parent"] == scene_before
    manifest = server.get(f"/v1/jobs/{keep.server_id}/scene")
    assert next(e for e in manifest["instances"] if e["label"] == 1)["seed"] == kept_seed
    assert root["iscene_job"] == keep.server_id, "the scene's next job (Refine, Regenerate) starts from the keep"
    table = bpy.data.objects[name]
    assert table["iscene_job"] == keep.server_id and table["iscene_mesh_seed"] == kept_seed
    # the same shape up to the decimation's choices (it is not continuous in its input: tests/test_variants.py)
    corners = face_corners(table)
    assert corners.shape == kept_shape.shape, "as many triangles as the kept candidate"
    assert np.allclose(corners.min((0, 1)), kept_shape.min((0, 1)), atol=1e-3)
    assert np.allclose(corners.max((0, 1)), kept_shape.max((0, 1)), atol=1e-3)
    assert abs(surface_area(corners) / surface_area(kept_shape) - 1) < 0.01
    assert np.allclose(expected_edit(root, table), edit, atol=1e-5), "the object's edit is still kept"
    assert [s.material for s in table.material_slots] == materials
    assert addon.job_requests.refine_request(bpy.context, root, False, 0.5).parent == keep.server_id


def test_discard_variants_removes_every_candidate_and_leaves_the_object(bpy, addon, inputs):
    scene_job = generate(bpy, addon)
    plant = instances(bpy, addon, scene_job)[4]
    mesh_hash, matrix = plant["iscene_mesh_sha256"], plant.matrix_world.copy()
    with pytest.raises(RuntimeError, match="variant candidates"):
        bpy.ops.iscene.discard_variants()
    make_variants(bpy, addon, plant, 2)
    laid_out = addon.provenance.candidates_of(plant)
    assert len(laid_out) == 2
    select_only(bpy, laid_out[0])
    with pytest.raises(RuntimeError, match="this is a candidate"):
        bpy.ops.iscene.variants(count=2)
    meshes = {o.data.name for o in laid_out}
    assert bpy.ops.iscene.discard_variants() == {"FINISHED"}
    assert addon.provenance.candidates_of(plant) == [] and not meshes & set(bpy.data.meshes.keys())
    assert plant["iscene_mesh_sha256"] == mesh_hash and plant.matrix_world == matrix
    assert bpy.context.view_layer.objects.active == plant


def test_keep_with_the_server_down_keeps_the_shape_in_blender_and_says_so(bpy, addon, inputs, prefs):
    scene_job = generate(bpy, addon)
    root = scene_root(bpy, addon, scene_job)
    lamp = instances(bpy, addon, scene_job)[4]
    make_variants(bpy, addon, lamp, 2)
    chosen = addon.provenance.candidates_of(lamp)[0]
    kept_hash, scene_before = chosen["iscene_mesh_sha256"], root["iscene_job"]
    prefs.server_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    bpy.ops.iscene.check_server()
    pump_until(addon, lambda: addon.pump.RUNTIME.health_error is not None, timeout=30)
    jobs_before = set(addon.pump.RUNTIME.jobs)
    select_only(bpy, chosen)
    assert bpy.ops.iscene.keep_variant() == {"FINISHED"}
    assert set(addon.pump.RUNTIME.jobs) == jobs_before, "no job that cannot reach the server"
    assert lamp["iscene_mesh_sha256"] == kept_hash and addon.provenance.candidates_of(lamp) == []
    assert root["iscene_job"] == scene_before, "the server's scene is unchanged, so the scene's next job starts there"
