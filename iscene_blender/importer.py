"""Turning a finished job into Blender data (main thread only).

A job becomes a collection holding a root empty (unscaled, at the 3D cursor: the scene's floor on the cursor,
its width the Room Width; see :mod:`.frames`), one mesh object per instance in metres (named
``<image>_<label name or id>``, origin at the bottom centre of its box, vertex colours (of a baked GLB without
``COLOR_0``: its texture at each vertex's UV), a material (Base Color from the baked texture, a packed image read
through the UV map, or from the vertex colours of an untextured mesh) and object colour from the mean vertex colour
so Solid shading shows the scene in colour, provenance in custom properties, see :mod:`.provenance`; a baked scene
switches Solid viewports left at Material colour to Texture colour) and a camera that sees the scene as the model
saw the image, with the image behind it. Meshes are built directly from the GLB arrays with ``foreach_set``
(faster than the glTF importer and free of its side effects on selection and collections; see bench/RESULTS.md).
Regenerate and refine swap the mesh datablock of existing objects, so the objects and their edits survive.

A layout (stage 1 only, or a job still running) arrives as *proxies*: the same objects, named and posed as the
final ones, whose mesh is the instance's voxel proxy (``proxy_<label>.glb``, origin the manifest's ``origin``),
drawn as wire (``display_type`` WIRE) and marked :data:`.provenance.PROXY`. Each final mesh is swapped into its
proxy by the rules of Regenerate. Variant candidates are separate objects next to their original (see
:func:`place_candidates`).
"""

from __future__ import annotations

import hashlib
import json

import bpy
import numpy as np
from mathutils import Matrix, Vector

from . import frames, provenance
from .glb import read_mesh
from .jobs import result_file
from .png import image_rows, texture_colours
from .provenance import CAMERA, CANDIDATE_INDEX, CANDIDATE_OF, CANDIDATE_SEED, JOB, LABEL, OBJECT, PROXY, ROOT, SCENE

MATERIAL = "I-Scene Vertex Colour"
COLOUR_MATERIAL = "iscene_colour_material"  # on the materials this add-on made (their viewport colour is ours)
COLOR_ATTRIBUTE = "Color"
UV_MAP = "UVMap"
COLOUR_NODES = ("ShaderNodeVertexColor", "ShaderNodeTexImage", "ShaderNodeUVMap")  # what _paint puts in a material
SEED = "iscene_seed"  # the seed field (registered on Object by props.py): Regenerate uses it
MESH_SEED = "iscene_mesh_seed"  # the seed that made the current mesh
MESH_SHA = "iscene_mesh_sha256"  # the digest of the GLB that made the current mesh
PROXY_DISPLAY = "WIRE"  # how a proxy is drawn: a placeholder, never mistaken for a result
VARIANT = "iscene_variant"  # on an object whose mesh is a kept variant candidate: its index in that job
CANDIDATE_GAP = 1.1  # candidates stand this many of the original's widths apart along the view's x
FIT = "iscene_fit_width"  # on a root sized from its layout: the Room Width to fit its meshes to once they are in


def colour_material(name: str, colour, image=None) -> bpy.types.Material:
    """This add-on's material: Base Color from ``image`` (a baked texture) or else the colour attribute, viewport
    colour ``colour``."""
    material = bpy.data.materials.new(name)
    material[COLOUR_MATERIAL] = True
    material.use_nodes = True
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = 1.0
    material.roughness = 1.0
    _paint(material, colour, image)
    return material


def _paint(material: bpy.types.Material, colour, image) -> None:
    """Feed the Base Color of this add-on's ``material`` from ``image`` through the UV map, or (None) from the
    colour attribute, replacing what fed it before; the viewport colour becomes ``colour``."""
    nodes, links = material.node_tree.nodes, material.node_tree.links
    for node in [n for n in nodes if n.bl_idname in COLOUR_NODES]:
        nodes.remove(node)
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    x, y = bsdf.location.x, bsdf.location.y
    if image is None:
        attribute = nodes.new("ShaderNodeVertexColor")
        attribute.layer_name = COLOR_ATTRIBUTE
        attribute.location = (x - 300, y)
        links.new(attribute.outputs["Color"], bsdf.inputs["Base Color"])
    else:
        texture = nodes.new("ShaderNodeTexImage")
        texture.image = image
        texture.location = (x - 320, y)
        uv = nodes.new("ShaderNodeUVMap")
        uv.uv_map = UV_MAP
        uv.location = (x - 520, y)
        links.new(uv.outputs["UV"], texture.inputs["Vector"])
        links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
        nodes.active = texture  # what Solid view's Texture colour shows
    material.diffuse_color = colour


def texture_image(name: str, png: bytes) -> bpy.types.Image:
    """A packed sRGB image of the PNG file ``png`` (saved inside the .blend, no file on disk)."""
    image = bpy.data.images.new(f"{name}_texture", 1, 1)
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"
    image.colorspace_settings.name = "sRGB"
    return image


def _material_images(material) -> list:
    return [n.image for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage" and n.image]


def build_mesh(name: str, data: bytes, scale: float, origin=None) -> tuple[bpy.types.Mesh, Matrix, tuple, dict, object]:
    """A mesh in metres about its origin (``origin`` in S, default the bottom centre of its box), its generated
    matrix in S, its mean vertex colour (linear RGBA), the GLB's extras and its baked texture as a packed image
    (None for an untextured mesh; a baked mesh gets the UV map :data:`UV_MAP`)."""
    arrays = read_mesh(data)
    lo, hi = arrays.vertices.min(0), arrays.vertices.max(0)
    if origin is None:
        origin = [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]]
    origin = np.array(origin, np.float32)
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
    image, vertex_colours = None, arrays.colors  # [V, 4] linear RGBA
    if arrays.texture is not None:
        loop_uvs = arrays.uvs[arrays.faces.ravel()]  # [L, 2] glTF UVs, v down
        layer = mesh.uv_layers.new(name=UV_MAP)
        layer.data.foreach_set("uv", np.stack([loop_uvs[:, 0], 1.0 - loop_uvs[:, 1]], axis=1).ravel())  # v up
        image = texture_image(name, arrays.texture)
        if not arrays.vertex_colors:  # no COLOR_0 (it would multiply the texture): the texture at each vertex
            vertex_colours = texture_colours(image_rows(image), arrays.uvs)
    colors = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    colors.data.foreach_set("color", vertex_colours.ravel())
    mesh.color_attributes.active_color = colors
    mean = tuple(float(v) for v in vertex_colours[:, :3].mean(0)) + (1.0,) if len(vertex_colours) else (1, 1, 1, 1)
    return mesh, frames.translation(origin), mean, arrays.extras, image


def entry_data(entry: dict, files: dict[str, bytes]) -> tuple[bytes, bool] | None:
    """(GLB bytes, whether it is a proxy) of the file that shows an instance, if it was downloaded."""
    name = result_file(entry)
    if name not in files:
        return None
    return files[name], not entry.get("file")


def entry_mesh(name: str, entry: dict, data: bytes, proxy: bool, scale: float):
    """``build_mesh`` for an instance: a proxy's origin is the one its final mesh will be placed by (the
    manifest's ``origin``, the bottom centre of its voxels), a final mesh's the bottom centre of its box."""
    origin = (entry.get("origin") or entry["bbox"].get("origin")) if proxy else None
    return build_mesh(name, data, scale, origin)


def scene_box(manifest: dict, files: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The union of the imported instances' boxes in S (a proxy's: its voxels'): (min xyz, max xyz)."""
    boxes = [e["bbox"] for e in manifest["instances"] if entry_data(e, files) is not None]
    if not boxes:
        raise ValueError("the job has no instance meshes to import")
    return np.min([b["min"] for b in boxes], axis=0), np.max([b["max"] for b in boxes], axis=0)


def floor_centre(lo: np.ndarray, hi: np.ndarray) -> tuple[float, float, float]:
    """The anchor of a scene box: the bottom centre, which sits on the root."""
    return float((lo[0] + hi[0]) / 2), float((lo[1] + hi[1]) / 2), float(lo[2])


def scale_for_width(lo: np.ndarray, hi: np.ndarray, room_width: float) -> float:
    """Metres per S unit so that the scene's widest horizontal side is ``room_width`` metres."""
    width = float(max(hi[0] - lo[0], hi[1] - lo[1]))
    return room_width / width if width > 1e-9 else 1.0


def _provenance(obj, root, job_id: str, entry: dict, manifest: dict, data: bytes, generated: Matrix,
                proxy: bool = False) -> None:
    obj[SCENE] = root[SCENE]
    obj[JOB] = job_id
    obj[LABEL] = entry["label"]
    obj[SEED] = obj[MESH_SEED] = int(entry["seed"])
    obj["iscene_model"] = json.dumps(manifest.get("models", {}), sort_keys=True)
    obj[MESH_SHA] = hashlib.sha256(data).hexdigest()
    frames.store_generated(obj, generated)
    show_as_proxy(obj, proxy)


def show_as_proxy(obj, proxy: bool) -> None:
    """Mark and draw ``obj`` as a proxy, or (its final mesh arrived) as a result again; a display type the
    artist chose is left alone."""
    if proxy:
        obj[PROXY] = True
        obj.display_type = PROXY_DISPLAY
    elif obj.get(PROXY):
        del obj[PROXY]
        if obj.display_type == PROXY_DISPLAY:
            obj.display_type = "TEXTURED"


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
    root = _root(f"{title}_scene", collection, job_id, scale, floor_centre(lo, hi), scene.cursor.location.copy())
    root["iscene_labels"] = [int(e["label"]) for e in manifest["instances"]]
    if any(not e.get("file") and e.get("proxy") in files for e in manifest["instances"]):
        root[FIT] = float(room_width)  # sized from its voxels: fitted to its meshes once they are in
    objects = []
    for entry in manifest["instances"]:
        shown = entry_data(entry, files)
        if shown is None:
            continue
        name = f"{title}_{names.get(int(entry['label'])) or entry['label']}"
        mesh, generated, colour, _, texture = entry_mesh(name, entry, *shown, scale)
        mesh.materials.append(colour_material(name, colour, texture))
        obj = bpy.data.objects.new(name, mesh)
        obj.color = colour
        collection.objects.link(obj)
        obj.parent = root
        obj.matrix_world = frames.placed(root, Matrix.Identity(4), generated)
        _provenance(obj, root, job_id, entry, manifest, shown[0], generated, proxy=shown[1])
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
    if any(e.get("file") and (e.get("texture") or {}).get("mode") == "baked" for e in manifest["instances"]):
        show_textures_in_solid_view()
    return root


def view_3d_shadings() -> list:
    """The shading settings of every 3D viewport: of the open windows' screens, or of every screen in the file
    when there are no windows (background mode)."""
    windows = bpy.context.window_manager.windows if bpy.context.window_manager else []
    screens = [window.screen for window in windows] or list(bpy.data.screens)
    return [space.shading for screen in screens for area in screen.areas if area.type == "VIEW_3D"
            for space in area.spaces if space.type == "VIEW_3D"]


def show_textures_in_solid_view() -> int:
    """Solid viewports colouring by material (Blender's default) colour by texture instead, so a baked scene shows
    its textures; a viewport whose colour the artist chose is left alone. Returns how many were switched."""
    switched = [s for s in view_3d_shadings() if s.type == "SOLID" and s.color_type == "MATERIAL"]
    for shading in switched:
        shading.color_type = "TEXTURE"
    return len(switched)


def _select(scene, objects) -> None:
    view_layer = bpy.context.view_layer
    for obj in scene.objects:
        obj.select_set(False)
    for obj in objects:
        if obj.name in view_layer.objects:
            obj.select_set(True)
    if objects and objects[0].name in view_layer.objects:
        view_layer.objects.active = objects[0]


def _swap_mesh(obj, mesh: bpy.types.Mesh, colour, image=None) -> None:
    """Give ``obj`` the new mesh with the old one's materials; this add-on's materials take the new colour and
    texture (``image``, None for an untextured mesh); the artist's materials stay as they are."""
    old = obj.data
    for material in old.materials:
        mesh.materials.append(material)
    obj.data = mesh
    if old.users == 0:
        bpy.data.meshes.remove(old)
    shown = [*mesh.materials, *(slot.material for slot in obj.material_slots)]  # the mesh's, and the object's
    for material in dict.fromkeys(m for m in shown if m is not None):  # each once, in order
        if material.get(COLOUR_MATERIAL) and material.users == 1:
            replaced = _material_images(material)
            _paint(material, colour, image)
            for stale in replaced:
                if stale.users == 0:
                    bpy.data.images.remove(stale)
    if image is not None and image.users == 0:  # no material of this add-on shows it: the artist's override
        bpy.data.images.remove(image)
    obj.color = colour


def replace_meshes(root, job_id: str, manifest: dict, files: dict[str, bytes], targets: dict[int, list],
                   keep_edits: bool) -> list:
    """Swap in the new meshes (or proxies) of a job on the ``targets`` objects of each label: a regenerate's, or
    a proxy's final mesh (``keep_edits``: the artist's edit stays on the new mesh), or a refine's (the result
    already includes the edit). Objects, names, parenting, modifiers, locks and material overrides stay."""
    scale = frames.scene_scale(root)
    updated = []
    for entry in manifest["instances"]:
        shown = entry_data(entry, files)
        if shown is None:
            continue
        for obj in targets.get(int(entry["label"]), []):
            edit = frames.edit_in_scene(root, obj) if keep_edits else Matrix.Identity(4)
            mesh, generated, colour, _, texture = entry_mesh(obj.name, entry, *shown, scale)
            _swap_mesh(obj, mesh, colour, texture)
            obj.matrix_world = frames.placed(root, edit, generated)
            _provenance(obj, root, job_id, entry, manifest, shown[0], generated, proxy=shown[1])
            updated.append(obj)
    return updated


def _width_along(obj, axis: Vector) -> float:
    """The extent of ``obj``'s box along the world direction ``axis`` (a unit vector)."""
    spans = [axis.dot(obj.matrix_world @ Vector(corner)) for corner in obj.bound_box]
    return max(spans) - min(spans)


def place_candidates(original, root, job_id: str, manifest: dict, files: dict[str, bytes], view_x) -> list:
    """One object per variant candidate, named ``<original> v<k>``: shaped by the candidate, placed as it would
    stand in the original's place (the original's edit kept), then moved along ``view_x`` (the view's right,
    world) by ``k`` original widths. Candidates are not members of the scene (Refine and Regenerate never see
    them); they name their original by its object id."""
    axis = Vector(view_x).normalized()
    step = _width_along(original, axis) * CANDIDATE_GAP
    edit = frames.edit_in_scene(root, original)
    scale = frames.scene_scale(root)
    placed = []
    for candidate in (manifest.get("variants") or {}).get("candidates", []):
        if candidate.get("file") not in files:
            continue
        index, data = int(candidate["index"]), files[candidate["file"]]
        name = f"{original.name} v{index}"
        mesh, generated, colour, _, texture = build_mesh(name, data, scale)
        mesh.materials.append(colour_material(name, colour, texture))
        obj = bpy.data.objects.new(name, mesh)
        obj.color = colour
        for collection in original.users_collection:
            collection.objects.link(obj)
        obj.parent = root
        obj.matrix_world = Matrix.Translation(axis * step * index) @ frames.placed(root, edit, generated)
        obj[CANDIDATE_OF], obj[CANDIDATE_INDEX], obj[CANDIDATE_SEED] = original[OBJECT], index, int(candidate["seed"])
        obj[JOB], obj[MESH_SHA] = job_id, hashlib.sha256(data).hexdigest()
        frames.store_generated(obj, generated)
        placed.append(obj)
    _select(bpy.context.scene, placed)
    return placed


def keep_candidate(candidate) -> bpy.types.Object:
    """Swap the candidate's mesh into its original (the original's edit and everything on it kept), record the
    candidate's seed and job, and remove every candidate of that original; returns the original."""
    original = provenance.original_of(candidate)
    root = provenance.root_of(original)
    edit = frames.edit_in_scene(root, original)
    mesh = candidate.data
    made = [m for m in mesh.materials if m is not None and m.get(COLOUR_MATERIAL)]
    texture = next((image for m in made for image in _material_images(m)), None)  # the candidate's baked texture
    mesh.materials.clear()  # the original's materials (and the artist's) come with the swap
    for material in made:
        if material.users == 0:
            bpy.data.materials.remove(material)
    mesh.name = original.name
    _swap_mesh(original, mesh, tuple(candidate.color), texture)
    generated = frames.generated(candidate)
    original.matrix_world = frames.placed(root, edit, generated)
    frames.store_generated(original, generated)
    original[SEED] = original[MESH_SEED] = int(candidate[CANDIDATE_SEED])
    original[JOB], original[MESH_SHA] = candidate[JOB], candidate[MESH_SHA]
    original[VARIANT] = int(candidate[CANDIDATE_INDEX])
    show_as_proxy(original, False)
    discard_candidates(original[OBJECT])
    return original


def discard_candidates(object_id: str) -> int:
    """Remove every candidate made for the object with this id (and the meshes and materials only they used);
    returns how many."""
    found = provenance.candidates_for(object_id)
    for obj in found:
        mesh = obj.data
        materials = [m for m in mesh.materials if m is not None and m.get(COLOUR_MATERIAL)] if mesh else []
        bpy.data.objects.remove(obj)
        if mesh is not None and mesh.users == 0:
            bpy.data.meshes.remove(mesh)
        for material in materials:
            if material.users == 0:
                images = _material_images(material)
                bpy.data.materials.remove(material)
                for image in images:
                    if image.users == 0:
                        bpy.data.images.remove(image)
    return len(found)


def fit_to_meshes(root, manifest: dict) -> bool:
    """A scene sized from its layout, now that its meshes are in: Room Width wide and its lowest point on the
    root, as if the finished job had been imported whole (the meshes reach a little beyond their voxels). Every
    edit (in S) is kept. Returns whether it was refitted."""
    boxes = [e["bbox"] for e in manifest["instances"] if e.get("file")]
    if FIT not in root or not boxes:
        return False
    lo, hi = np.min([b["min"] for b in boxes], axis=0), np.max([b["max"] for b in boxes], axis=0)
    factor = scale_for_width(lo, hi, float(root[FIT])) / frames.scene_scale(root)
    del root[FIT]
    _rescale(root, factor, floor_centre(lo, hi))
    return True


def resize_scene(root, factor: float) -> None:
    """Scale the whole scene by ``factor`` about its root, keeping every artist's edit (in S) as it is (the
    artist's size: a layout's meshes will not refit it)."""
    if FIT in root:
        del root[FIT]
    _rescale(root, factor)


def _rescale(root, factor: float, anchor=None) -> None:
    """Scale by ``factor`` (and put ``anchor``, a point of S, on the root), every edit in S kept."""
    members = provenance.members(root)
    edits = [(obj, frames.edit_in_scene(root, obj)) for obj in members if frames.GENERATED in obj]
    root[frames.SCALE] = frames.scene_scale(root) * factor
    if anchor is not None:
        root[frames.ANCHOR] = [float(v) for v in anchor]
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
