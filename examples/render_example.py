"""Render the example scene (a furnished room corner) and its instance label map with Blender.

    python examples/render_example.py examples/living_room.png examples/living_room_labels.png

Needs the ``bpy`` wheel (a test dependency). The photo-like image is a Cycles render; the label map is a
second render of the same camera in which every object is a flat emission colour, sampled once per pixel
centre, so every pixel carries exactly one id (palette PNG: index = instance id, 0 = background).
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import bpy
import numpy as np
from PIL import Image

WIDTH, HEIGHT = 640, 480
# id: (name, base colour)
OBJECTS = {1: ("table", (0.45, 0.26, 0.12)), 2: ("chair", (0.62, 0.08, 0.06)), 3: ("lamp", (0.08, 0.08, 0.09)),
           4: ("plant", (0.10, 0.42, 0.12)), 5: ("crate", (0.15, 0.30, 0.60))}


def box(name: str, size, location) -> bpy.types.Object:
    bpy.ops.mesh.primitive_cube_add(size=1, location=location)
    obj = bpy.context.active_object
    obj.scale = size
    obj.name = name
    return obj


def cylinder(name: str, radius: float, depth: float, location, vertices: int = 32, radius2=None):
    if radius2 is None:
        bpy.ops.mesh.primitive_cylinder_add(radius=radius, depth=depth, location=location, vertices=vertices)
    else:
        bpy.ops.mesh.primitive_cone_add(radius1=radius, radius2=radius2, depth=depth, location=location,
                                        vertices=vertices)
    obj = bpy.context.active_object
    obj.name = name
    return obj


def join(name: str, parts: list) -> bpy.types.Object:
    bpy.ops.object.select_all(action="DESELECT")
    for part in parts:
        part.select_set(True)
    bpy.context.view_layer.objects.active = parts[0]
    bpy.ops.object.transform_apply(location=False, rotation=True, scale=True)
    bpy.ops.object.join()
    obj = bpy.context.active_object
    obj.name = name
    bpy.context.scene.cursor.location = (0.0, 0.0, 0.0)
    bpy.ops.object.origin_set(type="ORIGIN_CURSOR")
    bpy.ops.object.shade_smooth()
    return obj


def material(name: str, colour, roughness: float = 0.6) -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*colour, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    return mat


def build_furniture() -> dict[int, bpy.types.Object]:
    legs = [box("leg", (0.05, 0.05, 0.72), (x, y, 0.36)) for x in (-0.55, 0.55) for y in (-0.3, 0.3)]
    table = join("table", [box("top", (1.3, 0.75, 0.05), (0, 0, 0.745))] + legs)
    chair_legs = [box("cleg", (0.04, 0.04, 0.45), (x, y, 0.225)) for x in (-0.2, 0.2) for y in (-0.2, 0.2)]
    chair = join("chair", [box("seat", (0.46, 0.46, 0.05), (0, 0, 0.47)),
                           box("back", (0.46, 0.05, 0.5), (0, 0.21, 0.72))] + chair_legs)
    chair.location = (0.35, -0.85, 0)
    chair.rotation_euler = (0, 0, math.radians(200))
    lamp = join("lamp", [cylinder("base", 0.16, 0.04, (0, 0, 0.02)), cylinder("pole", 0.015, 1.4, (0, 0, 0.72)),
                         cylinder("shade", 0.26, 0.32, (0, 0, 1.5), radius2=0.14)])
    lamp.location = (-1.05, 0.65, 0)
    bpy.ops.mesh.primitive_ico_sphere_add(radius=0.32, subdivisions=3, location=(0, 0, 0.62))
    foliage = bpy.context.active_object
    plant = join("plant", [cylinder("pot", 0.17, 0.34, (0, 0, 0.17), radius2=0.13), foliage])
    plant.location = (1.25, 0.45, 0)
    crate = box("crate", (0.45, 0.45, 0.38), (-0.6, -0.75, 0.19))
    crate.rotation_euler = (0, 0, math.radians(25))
    return {1: table, 2: chair, 3: lamp, 4: plant, 5: crate}


def build_room() -> None:
    bpy.ops.mesh.primitive_plane_add(size=8, location=(0, 0, 0))
    bpy.context.active_object.data.materials.append(material("floor", (0.55, 0.50, 0.44), 0.8))
    for location, rotation in (((0, 1.2, 2), (math.pi / 2, 0, 0)), ((-2.2, 0, 2), (math.pi / 2, 0, math.pi / 2))):
        bpy.ops.mesh.primitive_plane_add(size=8, location=location, rotation=rotation)
        bpy.context.active_object.data.materials.append(material("wall", (0.80, 0.78, 0.72), 0.9))


def setup_camera_and_light(scene) -> None:
    bpy.ops.object.camera_add(location=(2.6, -3.6, 2.1))
    camera = bpy.context.active_object
    direction = -camera.location + bpy.context.scene.cursor.location.__class__((0.0, 0.1, 0.55))
    camera.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    camera.data.lens = 30
    scene.camera = camera
    bpy.ops.object.light_add(type="AREA", location=(1.5, -1.5, 3.2))
    bpy.context.active_object.data.energy = 120
    bpy.context.active_object.data.size = 2.5
    bpy.ops.object.light_add(type="SUN", location=(0, 0, 5), rotation=(math.radians(50), 0, math.radians(30)))
    bpy.context.active_object.data.energy = 1.2


def render(path: Path, samples: int, exact: bool = False) -> None:
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = not exact
    scene.render.resolution_x, scene.render.resolution_y = WIDTH, HEIGHT
    scene.render.resolution_percentage = 100
    scene.render.filter_size = 0.01 if exact else 1.5
    scene.view_settings.view_transform = "Standard" if exact else "AgX"
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)


def _emission(name: str, colour) -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    nodes.clear()
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Color"].default_value = (*colour, 1.0)
    output = nodes.new("ShaderNodeOutputMaterial")
    mat.node_tree.links.new(emission.outputs[0], output.inputs[0])
    return mat


def flatten_to_ids(objects: dict[int, bpy.types.Object]) -> dict[int, tuple]:
    """Give every object a unique flat emission colour and the room black (it still occludes); return
    id -> colour."""
    colours = {}
    black = _emission("background", (0.0, 0.0, 0.0))
    for obj in bpy.data.objects:
        if obj.type == "MESH":
            obj.data.materials.clear()
            obj.data.materials.append(black)
    for label, obj in objects.items():
        colour = ((label * 53) % 256 / 255, (label * 97) % 256 / 255, (label * 151) % 256 / 255)
        obj.data.materials.clear()
        obj.data.materials.append(_emission(f"flat{label}", colour))
        colours[label] = colour
    bpy.context.scene.world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.0
    for light in [o for o in bpy.data.objects if o.type == "LIGHT"]:
        light.hide_render = True
    return colours


def main(image_path: str, labels_path: str) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.world = bpy.data.worlds.new("world")
    scene.world.use_nodes = True
    scene.world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.12, 0.13, 0.15, 1)
    build_room()
    objects = build_furniture()
    for label, obj in objects.items():
        obj.data.materials.append(material(OBJECTS[label][0], OBJECTS[label][1]))
    setup_camera_and_light(scene)
    render(Path(image_path), samples=48)

    colours = flatten_to_ids(objects)
    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "flat.png"
        render(flat, samples=1, exact=True)
        pixels = np.asarray(Image.open(flat).convert("RGB")).astype(np.int32)
    palette = np.array([[0, 0, 0]] + [[round(c * 255) for c in _srgb(colours[k])] for k in sorted(colours)])
    distance = ((pixels[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    ids = np.array([0] + sorted(colours), dtype=np.uint8)[distance.argmin(-1)]
    label_map = Image.fromarray(ids, mode="P")
    flat_palette = [0, 0, 0] + [int(v * 255) for k in sorted(OBJECTS) for v in OBJECTS[k][1]]
    label_map.putpalette(flat_palette + [0] * (768 - len(flat_palette)))
    label_map.save(labels_path)


def _srgb(colour):
    return [12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055 for c in colour]


if __name__ == "__main__":
    main(*sys.argv[1:3])
