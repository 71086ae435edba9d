"""Turning a finished job into Blender data (main thread only).

A job becomes one collection holding a root empty (the scene frame, scaled to the scene size and placed at the
3D cursor), one mesh object per instance (named ``<image>_<label>``, origin at the bottom centre of its box,
vertex-colour material, provenance in custom properties) and a camera that sees the scene as the model saw the
image, with that image behind it. Meshes are built directly from the GLB arrays with ``foreach_set`` (faster
than the glTF importer and free of its side effects on selection and collections; see bench/RESULTS.md).
Regenerate and refine swap the mesh datablock of existing objects, so the objects and their edits survive.
"""

from __future__ import annotations

import hashlib
import json

import bpy
import numpy as np
from mathutils import Matrix

from . import frames
from .glb import read_mesh

MATERIAL = "I-Scene Vertex Colour"
COLOR_ATTRIBUTE = "Color"
JOB = "iscene_job"  # on collections (the scene's current job) and objects (the job that made their mesh)
LABEL = "iscene_label"
ROOT = "iscene_root"


def vertex_colour_material() -> bpy.types.Material:
    material = bpy.data.materials.get(MATERIAL)
    if material is not None:
        return material
    material = bpy.data.materials.new(MATERIAL)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    attribute = nodes.new("ShaderNodeVertexColor")
    attribute.layer_name = COLOR_ATTRIBUTE
    attribute.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(attribute.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 1.0
    return material


def build_mesh(name: str, data: bytes) -> tuple[bpy.types.Mesh, Matrix, dict]:
    """A mesh in its local frame (origin at the bottom centre of its box), its generated matrix in S, extras."""
    arrays = read_mesh(data)
    lo, hi = arrays.vertices.min(0), arrays.vertices.max(0)
    origin = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], np.float32)
    local = arrays.vertices - origin
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(local))
    mesh.vertices.foreach_set("co", local.ravel())
    mesh.loops.add(arrays.faces.size)
    mesh.loops.foreach_set("vertex_index", arrays.faces.ravel())
    mesh.polygons.add(len(arrays.faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, arrays.faces.size, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(arrays.faces), 3, dtype=np.int32))
    mesh.polygons.foreach_set("use_smooth", np.ones(len(arrays.faces), dtype=bool))
    mesh.update(calc_edges=True)
    colors = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    colors.data.foreach_set("color", arrays.colors.ravel())
    mesh.color_attributes.active_color = colors
    mesh.materials.append(vertex_colour_material())
    return mesh, frames.translation(origin), arrays.extras


def _provenance(obj, job_id: str, entry: dict, manifest: dict, data: bytes, generated: Matrix) -> None:
    obj[JOB] = job_id
    obj[LABEL] = entry["label"]
    obj["iscene_seed"] = entry["seed"]
    obj["iscene_model"] = json.dumps(manifest.get("models", {}), sort_keys=True)
    obj["iscene_mesh_sha256"] = hashlib.sha256(data).hexdigest()
    frames.store_generated(obj, generated)


def _root(name: str, collection, scale: float, location) -> bpy.types.Object:
    root = bpy.data.objects.new(name, None)
    root.empty_display_type = "ARROWS"
    root.empty_display_size = 0.5
    root.matrix_world = Matrix.Translation(location) @ Matrix.Scale(scale, 4)
    root[ROOT] = True
    collection.objects.link(root)
    return root


def _camera(name: str, collection, root, settings: dict, scale: float, image) -> bpy.types.Object:
    """The solved camera as a child of the root, without inheriting its scale (lens stays the lens)."""
    data = bpy.data.cameras.new(name)
    data.type = settings["type"]
    data.sensor_fit = settings["sensor_fit"]
    data.sensor_width, data.sensor_height = settings["sensor_width"], settings["sensor_height"]
    data.shift_x, data.shift_y = settings["shift_x"], settings["shift_y"]
    if settings["type"] == "ORTHO":
        data.ortho_scale = settings["ortho_scale"] * scale
    else:
        data.lens = settings["lens"]
    data.clip_start = settings.get("clip_start", 0.01) * scale
    data.clip_end = settings.get("clip_end", 100.0) * scale
    if image is not None:
        background = data.background_images.new()
        background.image = image
        background.frame_method = "STRETCH"
        background.alpha = 0.6
        data.show_background_images = True
    camera = bpy.data.objects.new(name, data)
    collection.objects.link(camera)
    camera.parent = root
    rotation = Matrix([list(r) + [0.0] for r in settings["rotation_matrix"]] + [[0.0, 0.0, 0.0, 1.0]])
    camera.matrix_local = Matrix.Translation(settings["location"]) @ rotation @ Matrix.Scale(1.0 / scale, 4)
    return camera


def import_scene(scene: bpy.types.Scene, job_id: str, title: str, manifest: dict, files: dict[str, bytes],
                 image=None, scale: float = 4.0) -> bpy.types.Collection:
    """A new collection for a finished generate job, linked into ``scene``; returns it."""
    collection = bpy.data.collections.new(f"I-Scene {title}")
    scene.collection.children.link(collection)
    collection[JOB] = job_id
    collection["iscene_labels"] = [int(e["label"]) for e in manifest["instances"]]
    root = _root(f"{title}_scene", collection, scale, scene.cursor.location.copy())
    objects = []
    for entry in manifest["instances"]:
        if entry.get("file") not in files:
            continue
        name = f"{title}_{entry['label']}"
        mesh, generated, _ = build_mesh(name, files[entry["file"]])
        obj = bpy.data.objects.new(name, mesh)
        collection.objects.link(obj)
        obj.parent = root
        obj.matrix_local = generated
        _provenance(obj, job_id, entry, manifest, files[entry["file"]], generated)
        objects.append(obj)
    camera_settings = (manifest.get("camera") or {}).get("blender")
    if camera_settings:
        camera = _camera(f"{title}_camera", collection, root, camera_settings, scale, image)
        scene.render.resolution_x, scene.render.resolution_y = camera_settings["resolution"]
        scene.render.resolution_percentage = 100
        if scene.camera is None:
            scene.camera = camera
    _select(scene, objects)
    return collection


def _select(scene, objects) -> None:
    view_layer = bpy.context.view_layer
    for obj in scene.objects:
        obj.select_set(False)
    for obj in objects:
        if obj.name in view_layer.objects:
            obj.select_set(True)
    if objects and objects[0].name in view_layer.objects:
        view_layer.objects.active = objects[0]


def scene_root(collection) -> bpy.types.Object | None:
    return next((o for o in collection.objects if o.get(ROOT)), None)


def instance_objects(collection) -> dict[int, bpy.types.Object]:
    return {int(o[LABEL]): o for o in collection.all_objects if LABEL in o}


def replace_meshes(collection, job_id: str, manifest: dict, files: dict[str, bytes], keep_edits: bool) -> list:
    """Swap in the new meshes of a regenerate (``keep_edits``: the artist's edit stays on the new mesh) or a
    refine (the result already includes the edit). Objects, parenting, modifiers and material overrides stay."""
    root = scene_root(collection)
    objects = instance_objects(collection)
    updated = []
    for entry in manifest["instances"]:
        obj = objects.get(entry["label"])
        if obj is None or entry.get("file") not in files:
            continue
        edit = frames.edit_in_scene(root, obj) if keep_edits else Matrix.Identity(4)
        mesh, generated, _ = build_mesh(obj.name, files[entry["file"]])
        old = obj.data
        overrides = [m for m in old.materials if m is not None and m.name != MATERIAL]
        if overrides:
            mesh.materials.clear()
            for material in old.materials:
                mesh.materials.append(material)
        obj.data = mesh
        if old.users == 0:
            bpy.data.meshes.remove(old)
        obj.matrix_world = root.matrix_world @ edit @ generated
        _provenance(obj, job_id, entry, manifest, files[entry["file"]], generated)
        updated.append(obj)
    collection[JOB] = job_id
    return updated
