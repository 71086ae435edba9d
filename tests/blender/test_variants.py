"""Variants in Blender (issue 15): K candidate shapes for one object, laid out beside it along the view's right;
Keep This One swaps the chosen shape into the object (its edits kept, the seed recorded) and removes the rest;
Discard Variants removes them all. A real ``iscene-server`` (tiny package) makes the candidates.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from .test_addon import generate, instances, move_in_world, run_operator, scene_root, scene_to_world, select_only
from .test_loop import expected_edit


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    select_only(bpy, chosen)
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
