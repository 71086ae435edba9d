"""Use as Context (issue 16): the artist's own meshes go with Refine as fixed parts of the generated scene.

The installed extension drives the session's real ``iscene-server`` (tiny package); the pump is called as
Blender's timer would. Expected values come from numpy on the Blender data (``scene_to_world`` of
:mod:`.test_addon` reads the root's stored scale and anchor), not from the add-on's own frames.
"""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest

from .test_addon import draw_panel, generate, instances, run_operator, scene_root, scene_to_world, select_only

CELL = 1.0 / 64  # one cell of the scene frame's 64^3 grid, in S units
CUBE_FACES = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]


def make_cube(bpy, name: str, size: float, location=(0.0, 0.0, 0.0), parent=None, sides=(1.0, 1.0, 1.0)):
    """A user-modelled box (``size`` metres times ``sides`` along x, y, z) linked to the scene, no I-Scene
    properties."""
    hx, hy, hz = (size * side / 2 for side in sides)
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([(x, y, z) for x in (-hx, hx) for y in (-hy, hy) for z in (-hz, hz)], [], CUBE_FACES)
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    obj.parent = parent
    obj.location = location
    bpy.context.view_layer.update()
    return obj


def evaluated(bpy, obj) -> tuple[np.ndarray, int]:
    """(world vertices [V, 3] of the mesh with its modifiers, its triangle count)."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    source = obj.evaluated_get(depsgraph)
    mesh = source.to_mesh()
    try:
        mesh.calc_loop_triangles()
        local = np.empty(len(mesh.vertices) * 3, np.float64)
        mesh.vertices.foreach_get("co", local)
        triangles = len(mesh.loop_triangles)
    finally:
        source.to_mesh_clear()
    world = np.c_[local.reshape(-1, 3), np.ones(len(local) // 3)] @ np.array(source.matrix_world).T
    return world[:, :3], triangles


def in_scene(root, world: np.ndarray) -> np.ndarray:
    return (np.c_[world, np.ones(len(world))] @ np.linalg.inv(scene_to_world(root)).T)[:, :3]


def s_to_world(root, point) -> np.ndarray:
    return (scene_to_world(root) @ np.r_[np.asarray(point, float), 1.0])[:3]


def snapshot(obj) -> dict:
    """What a job must never change on a context object."""
    local = np.empty(len(obj.data.vertices) * 3, np.float64)
    obj.data.vertices.foreach_get("co", local)
    return {"vertices": local, "mesh": obj.data.name, "matrix": np.array(obj.matrix_world),
            "modifiers": [(m.name, m.type) for m in obj.modifiers], "properties": dict(obj.items()),
            "parent": obj.parent, "context": obj.iscene_context}


def assert_unchanged(obj, before: dict) -> None:
    after = snapshot(obj)
    assert np.array_equal(after.pop("vertices"), before["vertices"]), "its mesh data are untouched"
    assert np.array_equal(after.pop("matrix"), before["matrix"]), "it is not moved"
    assert after == {k: v for k, v in before.items() if k not in ("vertices", "matrix")}


def close_sets(got: np.ndarray, expected: np.ndarray, atol: float) -> bool:
    """Every point of each set has one of the other within ``atol``."""
    distances = np.linalg.norm(got[:, None, :] - expected[None, :, :], axis=2)  # [G, E]
    return bool(distances.min(axis=1).max() <= atol and distances.min(axis=0).max() <= atol)


def sent_glb(addon, entry: dict):
    return addon.glb.read_mesh(base64.b64decode(entry["glb"]))


def material(bpy, name: str, rgba):
    found = bpy.data.materials.new(name)
    found.use_nodes = True
    found.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = rgba
    return found


# --- the loop: generate, model a cube with a modifier, Use as Context, Refine -----------------------------------

def test_refine_sends_a_modelled_cube_as_context_and_never_changes_it(bpy, addon, inputs, server):
    job = generate(bpy, addon)
    root = scene_root(bpy, addon, job)
    objects = instances(bpy, addon, job)
    scale = float(root["iscene_scale"])
    cube = make_cube(bpy, "my table", 0.2 * scale, s_to_world(root, (0.2, -0.15, 0.05)))
    bevel = cube.modifiers.new("Bevel", "BEVEL")
    bevel.width, bevel.segments = 0.02 * scale, 3
    cube.iscene_context = True
    cube["artist_note"] = "mine"
    bpy.context.view_layer.update()
    world, triangles = evaluated(bpy, cube)
    assert triangles > 12, "the bevel adds faces"
    before, names = snapshot(cube), set(bpy.data.objects.keys())

    select_only(bpy, objects[1])
    bpy.context.view_layer.objects.active = cube  # the panel shows the toggle for the artist's own mesh
    drawn = draw_panel(bpy, addon.panel.VIEW3D_PT_iscene)
    assert ("prop", "iscene_context", "") in drawn and ("label", "Active Object: my table", "OBJECT_DATA") in drawn
    assert ("label", "Context: 1 object (my table)", "MESH_CUBE") in drawn

    inputs.refine_selected, inputs.strength = False, 0.5
    refined = run_operator(addon, bpy.ops.iscene.refine)
    assert refined.state == "succeeded", f"{refined.message} ({refined.hint})"
    (sent,) = refined.params["context"]
    assert sent["name"] == "my table" and len(sent_glb(addon, sent).faces) == triangles, "modifiers applied"
    (recorded,) = server.get(f"/v1/jobs/{refined.server_id}")["params"]["context"]
    assert recorded["name"] == "my table" and recorded["faces"] == triangles
    assert "glb" not in recorded

    manifest = server.get(f"/v1/jobs/{refined.server_id}/scene")
    (used,) = manifest["context"]
    assert used["name"] == "my table" and used["voxels"] > 0 and used["applied"] and not used["clipped"]
    box = in_scene(root, world)
    expected = np.clip(np.stack([box.min(0), box.max(0)]), -0.5, 0.5)
    got = np.array([used["bbox"]["min"], used["bbox"]["max"]])
    assert np.allclose(got, expected, atol=CELL + 1e-4), (got, expected)
    assert sorted(entry["label"] for entry in manifest["instances"]) == sorted(objects), "never an instance"

    assert set(bpy.data.objects.keys()) == names, "no object is made for it"
    assert_unchanged(cube, before)
    assert set(dict(cube.items())) <= {"artist_note", "iscene_context"}, "no other property is written to it"
    for entry in manifest["instances"]:
        assert objects[entry["label"]]["iscene_job"] == refined.server_id, "the generated objects are refined"


# --- the transform: parented, rotated, scaled, with the root moved and the scene resized ------------------------

def test_the_sent_transform_maps_the_sent_mesh_onto_the_objects_place_in_the_scene(bpy, addon, inputs):
    job = generate(bpy, addon)
    root = scene_root(bpy, addon, job)
    objects = instances(bpy, addon, job)
    root.location = (1.5, -0.75, 0.25)
    bpy.context.view_layer.update()
    select_only(bpy, objects[4])
    height = objects[4].dimensions.z
    assert bpy.ops.iscene.set_size(dimension="HEIGHT", size=height * 1.3) == {"FINISHED"}
    bpy.context.view_layer.update()
    scale = float(root["iscene_scale"])

    holder = bpy.data.objects.new("shelf", None)
    bpy.context.scene.collection.objects.link(holder)
    holder.location = s_to_world(root, (0.1, 0.1, 0.0))
    holder.rotation_euler = (0.0, 0.0, math.radians(30.0))
    holder.scale = (1.5, 1.5, 1.5)
    cube = make_cube(bpy, "box", 0.1 * scale, (0.02 * scale, 0.0, 0.0), parent=holder, sides=(1.0, 0.6, 0.3))
    cube.rotation_euler = (math.radians(20.0), 0.0, math.radians(-45.0))
    cube.scale = (1.0, 2.0, 0.5)
    red, blue = material(bpy, "red", (0.8, 0.05, 0.02, 1.0)), material(bpy, "blue", (0.02, 0.1, 0.9, 1.0))
    cube.data.materials.append(red)
    cube.data.materials.append(blue)
    cube.data.polygons[0].material_index = 1  # one blue face, the others red
    cube.data.update()
    cube.iscene_context = True
    bpy.context.view_layer.update()

    (entry,) = addon.context_objects.context_payload(bpy.context, root)
    mesh = sent_glb(addon, entry)
    transform = np.array(entry["transform"])
    assert np.array_equal(transform[3], [0, 0, 0, 1])
    placed = (np.c_[mesh.vertices, np.ones(len(mesh.vertices))] @ transform.T)[:, :3]
    world, triangles = evaluated(bpy, cube)
    assert len(mesh.faces) == triangles == 12
    assert close_sets(placed, in_scene(root, world), atol=1e-5), "transform @ GLB vertices = the object in S"
    assert np.abs(placed).max() < 0.5, "the object lies in the scene's volume"

    face_colors = mesh.colors[mesh.faces[:, 0], :3]  # [F, 3] linear, one colour per triangle
    assert np.all(mesh.colors[mesh.faces[:, 1], :3] == face_colors), "a triangle has one colour"
    blue_faces = np.all(np.isclose(face_colors, (0.02, 0.1, 0.9), atol=1e-6), axis=1)
    red_faces = np.all(np.isclose(face_colors, (0.8, 0.05, 0.02), atol=1e-6), axis=1)
    assert blue_faces.sum() == 2 and red_faces.sum() == 10, "the quad's two triangles are blue, the rest red"


# --- which objects go, and what is refused ------------------------------------------------------------------

def test_hidden_objects_and_generated_instances_are_never_sent(bpy, addon, inputs):
    job = generate(bpy, addon)
    root = scene_root(bpy, addon, job)
    objects = instances(bpy, addon, job)
    scale = float(root["iscene_scale"])
    shown = make_cube(bpy, "shown", 0.1 * scale, s_to_world(root, (0.0, 0.2, 0.0)))
    hidden = make_cube(bpy, "hidden", 0.1 * scale, s_to_world(root, (0.0, -0.2, 0.0)))
    untoggled = make_cube(bpy, "untoggled", 0.1 * scale, s_to_world(root, (0.2, 0.0, 0.0)))
    for obj in (shown, hidden, objects[1]):
        obj.iscene_context = True
    hidden.hide_set(True)
    bpy.context.view_layer.update()
    assert untoggled.visible_get() and not hidden.visible_get()

    request = addon.job_requests.refine_request(bpy.context, root, False, 0.5)
    assert [entry["name"] for entry in request.params["context"]] == ["shown"]
    assert objects[1].name not in [o.name for o in addon.context_objects.context_objects(bpy.context, root)]

    select_only(bpy, objects[1])
    bpy.context.view_layer.objects.active = objects[1]
    drawn = draw_panel(bpy, addon.panel.VIEW3D_PT_iscene)
    assert ("prop", "iscene_context", "") not in drawn, "a generated object is in the scene already"
    assert ("label", "Context: 1 object (shown)", "MESH_CUBE") in drawn

    shown.iscene_context = False
    assert "context" not in addon.job_requests.refine_request(bpy.context, root, False, 0.5).params


@pytest.mark.parametrize("case, words", [
    ("faces", r"'dense' has 192 triangles.*add a Decimate modifier"),
    ("glb", r"'dense' makes a .* MiB mesh.*add a Decimate modifier"),
    ("reach", r"'dense' reaches too far.*move it next to the generated objects"),
    ("count", r"9 objects have Use as Context on.*at most 8.*turn it off on some"),
])
def test_an_object_over_a_limit_is_refused_by_name_with_the_fix_and_nothing_starts(
        bpy, addon, inputs, monkeypatch, case, words):
    job = generate(bpy, addon)
    root = scene_root(bpy, addon, job)
    objects = instances(bpy, addon, job)
    scale = float(root["iscene_scale"])
    where = (3.0, 0.0, 0.0) if case == "reach" else (0.0, 0.2, 0.0)
    dense = make_cube(bpy, "dense", 0.1 * scale, s_to_world(root, where))
    dense.modifiers.new("Subdivision", "SUBSURF").levels = 2  # 6 quads -> 96 quads -> 192 triangles
    dense.iscene_context = True
    if case == "faces":
        monkeypatch.setattr(addon.context_objects, "MAX_CONTEXT_FACES", 191)
    if case == "glb":
        monkeypatch.setattr(addon.context_objects, "MAX_CONTEXT_GLB_MB", 1e-4)
    if case == "count":
        for i in range(8):
            make_cube(bpy, f"extra {i}", 0.05 * scale, s_to_world(root, (-0.3 + 0.07 * i, -0.3, 0.0)))
            bpy.data.objects[f"extra {i}"].iscene_context = True
    bpy.context.view_layer.update()
    ids = {o.name: o.get("iscene_object") for o in objects.values()}
    select_only(bpy, objects[1])
    before = set(addon.pump.RUNTIME.jobs)
    with pytest.raises(RuntimeError, match=words):
        bpy.ops.iscene.refine()
    assert set(addon.pump.RUNTIME.jobs) == before, "no job starts"
    assert {o.name: o.get("iscene_object") for o in objects.values()} == ids, "no object was claimed"

    monkeypatch.undo()
    if case in ("faces", "glb"):
        (entry,) = addon.context_objects.context_payload(bpy.context, root)
        assert len(sent_glb(addon, entry).faces) == 192, "under the real limits it goes"
