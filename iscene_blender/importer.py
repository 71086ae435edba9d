"""Turning a finished job into Blender data (main thread only).

A job becomes a collection holding a root empty (unscaled, at the 3D cursor: the scene's floor on the cursor,
its width the Room Width; see :mod:`.frames`), one mesh object per instance in metres (named
``<image>_<label name or id>``, origin at the bottom centre of its box, vertex colours, a material and object
colour from the mean vertex colour so Solid shading shows the scene in colour, provenance in custom
properties, see :mod:`.provenance`) and a camera that sees the scene as the model saw the image, with the image
behind it. Meshes are built directly from the GLB arrays with ``foreach_set`` (faster than the glTF importer and
free of its side effects on selection and collections; see bench/RESULTS.md). Regenerate and refine swap the
mesh datablock of existing objects, so the objects and their edits survive.
"""

from __future__ import annotations

import hashlib
import json

import bpy
import numpy as np
from mathutils import Matrix

from . import frames, provenance
from .glb import read_mesh
from .provenance import CAMERA, JOB, LABEL, ROOT, SCENE

MATERIAL = "I-Scene Vertex Colour"
COLOUR_MATERIAL = "iscene_colour_material"  # on the materials this add-on made (their viewport colour is ours)
COLOR_ATTRIBUTE = "Color"
SEED = "iscene_seed"  # the seed field (registered on Object by props.py): Regenerate uses it
MESH_SEED = "iscene_mesh_seed"  # the seed that made the current mesh


def colour_material(name: str, colour) -> bpy.types.Material:
    """A vertex-colour material (Base Color from the colour attribute) whose viewport colour is ``colour``."""
    material = bpy.data.materials.new(name)
    material[COLOUR_MATERIAL] = True
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    attribute = nodes.new("ShaderNodeVertexColor")
    attribute.layer_name = COLOR_ATTRIBUTE
    attribute.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(attribute.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 1.0
    material.diffuse_color = colour
    material.roughness = 1.0
    return material


def build_mesh(name: str, data: bytes, scale: float) -> tuple[bpy.types.Mesh, Matrix, tuple, dict]:
    """A mesh in metres about its origin (the bottom centre of its box), its generated matrix in S, its mean
    vertex colour (linear RGBA) and the GLB's extras."""
    arrays = read_mesh(data)
    lo, hi = arrays.vertices.min(0), arrays.vertices.max(0)
    origin = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], np.float32)
    local = (arrays.vertices - origin) * np.float32(scale)  # [V, 3] metres
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
    mean = tuple(float(v) for v in arrays.colors[:, :3].mean(0)) + (1.0,) if len(arrays.colors) else (1, 1, 1, 1)
    return mesh, frames.translation(origin), mean, arrays.extras


def scene_box(manifest: dict, files: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The union of the imported instances' boxes in S: (min xyz, max xyz)."""
    boxes = [e["bbox"] for e in manifest["instances"] if e.get("file") in files]
    if not boxes:
        raise ValueError("the job has no instance meshes to import")
    return np.min([b["min"] for b in boxes], axis=0), np.max([b["max"] for b in boxes], axis=0)


def scale_for_width(lo: np.ndarray, hi: np.ndarray, room_width: float) -> float:
    """Metres per S unit so that the scene's widest horizontal side is ``room_width`` metres."""
    width = float(max(hi[0] - lo[0], hi[1] - lo[1]))
    return room_width / width if width > 1e-9 else 1.0


def _provenance(obj, root, job_id: str, entry: dict, manifest: dict, data: bytes, generated: Matrix) -> None:
    obj[SCENE] = root[SCENE]
    obj[JOB] = job_id
    obj[LABEL] = entry["label"]
    obj[SEED] = obj[MESH_SEED] = int(entry["seed"])
    obj["iscene_model"] = json.dumps(manifest.get("models", {}), sort_keys=True)
    obj["iscene_mesh_sha256"] = hashlib.sha256(data).hexdigest()
    frames.store_generated(obj, generated)


def _root(name: str, collection, job_id: str, scale: float, anchor, location) -> bpy.types.Object:
    root = bpy.data.objects.new(name, None)
    root.empty_display_type = "ARROWS"
    root.empty_display_size = 0.5
    root.matrix_world = Matrix.Translation(location)
    root[ROOT] = True
    root[SCENE] = provenance.new_id()
    root[JOB] = job_id
    root[frames.SCALE] = float(scale)
    root[frames.ANCHOR] = [float(v) for v in anchor]
    collection.objects.link(root)
    return root


def _camera(name: str, collection, root, settings: dict, image) -> bpy.types.Object:
    """The solved camera (a member of the scene, placed like its objects), lens and clipping in metres."""
    scale = frames.scene_scale(root)
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
    generated = Matrix.Translation(settings["location"]) @ rotation
    camera[SCENE], camera[CAMERA] = root[SCENE], True
    frames.store_generated(camera, generated)
    camera.matrix_world = frames.placed(root, Matrix.Identity(4), generated)
    return camera


def import_scene(scene: bpy.types.Scene, job_id: str, title: str, manifest: dict, files: dict[str, bytes],
                 image=None, room_width: float = 4.0, make_camera_active: bool = True,
                 names: dict[int, str] | None = None) -> bpy.types.Object:
    """A new collection for a finished job, linked into ``scene``; returns the scene's root empty."""
    names = names or {}
    collection = bpy.data.collections.new(f"I-Scene {title}")
    scene.collection.children.link(collection)
    lo, hi = scene_box(manifest, files)
    scale = scale_for_width(lo, hi, room_width)
    anchor = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2])
    root = _root(f"{title}_scene", collection, job_id, scale, anchor, scene.cursor.location.copy())
    root["iscene_labels"] = [int(e["label"]) for e in manifest["instances"]]
    objects = []
    for entry in manifest["instances"]:
        if entry.get("file") not in files:
            continue
        name = f"{title}_{names.get(int(entry['label'])) or entry['label']}"
        mesh, generated, colour, _ = build_mesh(name, files[entry["file"]], scale)
        mesh.materials.append(colour_material(name, colour))
        obj = bpy.data.objects.new(name, mesh)
        obj.color = colour
        collection.objects.link(obj)
        obj.parent = root
        obj.matrix_world = frames.placed(root, Matrix.Identity(4), generated)
        _provenance(obj, root, job_id, entry, manifest, files[entry["file"]], generated)
        provenance.claim([obj])
        objects.append(obj)
    camera_settings = (manifest.get("camera") or {}).get("blender")
    if camera_settings:
        camera = _camera(f"{title}_camera", collection, root, camera_settings, image)
        if make_camera_active:
            scene.camera = camera
            scene.render.resolution_x, scene.render.resolution_y = camera_settings["resolution"]
            scene.render.resolution_percentage = 100
    _select(scene, objects)
    return root


def _select(scene, objects) -> None:
    view_layer = bpy.context.view_layer
    for obj in scene.objects:
        obj.select_set(False)
    for obj in objects:
        if obj.name in view_layer.objects:
            obj.select_set(True)
    if objects and objects[0].name in view_layer.objects:
        view_layer.objects.active = objects[0]


def _swap_mesh(obj, mesh: bpy.types.Mesh, colour) -> None:
    """Give ``obj`` the new mesh with the old one's materials; this add-on's materials take the new colour."""
    old = obj.data
    for material in old.materials:
        mesh.materials.append(material)
    obj.data = mesh
    if old.users == 0:
        bpy.data.meshes.remove(old)
    for slot in obj.material_slots:
        if slot.material is not None and slot.material.get(COLOUR_MATERIAL) and slot.material.users == 1:
            slot.material.diffuse_color = colour
    obj.color = colour


def replace_meshes(root, job_id: str, manifest: dict, files: dict[str, bytes], targets: dict[int, list],
                   keep_edits: bool) -> list:
    """Swap in the new meshes of a regenerate (``keep_edits``: the artist's edit stays on the new mesh) or a
    refine (the result already includes the edit) on the ``targets`` objects of each label. Objects, parenting,
    modifiers and material overrides stay."""
    scale = frames.scene_scale(root)
    updated = []
    for entry in manifest["instances"]:
        if entry.get("file") not in files:
            continue
        for obj in targets.get(int(entry["label"]), []):
            edit = frames.edit_in_scene(root, obj) if keep_edits else Matrix.Identity(4)
            mesh, generated, colour, _ = build_mesh(obj.name, files[entry["file"]], scale)
            _swap_mesh(obj, mesh, colour)
            obj.matrix_world = frames.placed(root, edit, generated)
            _provenance(obj, root, job_id, entry, manifest, files[entry["file"]], generated)
            updated.append(obj)
    root[JOB] = job_id
    return updated


def resize_scene(root, factor: float) -> None:
    """Scale the whole scene by ``factor`` about its root, keeping every artist's edit (in S) as it is."""
    members = provenance.members(root)
    edits = [(obj, frames.edit_in_scene(root, obj)) for obj in members if frames.GENERATED in obj]
    root[frames.SCALE] = frames.scene_scale(root) * factor
    resized = set()
    for obj, _ in edits:
        data = obj.data
        if data is None or data.name in resized:
            continue
        resized.add(data.name)
        if obj.type == "MESH":
            data.transform(Matrix.Scale(factor, 4))
        elif obj.type == "CAMERA":
            data.ortho_scale *= factor
            data.clip_start *= factor
            data.clip_end *= factor
    for obj, edit in edits:
        obj.matrix_world = frames.placed(root, edit, frames.generated(obj))
    bpy.context.view_layer.update()
