"""Render the README screenshot headlessly: a generated scene imported by the extension's own importer.

    iscene-server generate --model models/tiny --image examples/living_room.png \\
        --labels examples/living_room_labels.png --out results/demo
    python docs/render_screenshot.py results/demo examples/living_room.png docs/screenshot.png

Needs the ``bpy`` wheel (a test dependency) and Pillow. The left half is the imported scene seen through the
solved camera, laid over the reference image; the right half is a three-quarter view of the same objects.
With the tiny test model the shapes are noise (its weights are random); with the released model they are the
objects of the image.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import bpy
from mathutils import Vector
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iscene_blender import importer  # noqa: E402  (the add-on package, imported from the repository)

SCENE_SIZE = 4.0
PANEL_HEIGHT = 480


def import_job(folder: Path, image_path: Path) -> bpy.types.Collection:
    manifest = json.loads((folder / "scene.json").read_text())
    files = {e["file"]: (folder / e["file"]).read_bytes() for e in manifest["instances"] if e.get("file")}
    image = bpy.data.images.load(str(image_path))
    scene = bpy.context.scene
    collection = importer.import_scene(scene, folder.name, image_path.stem, manifest, files, image, SCENE_SIZE)
    bpy.context.view_layer.update()
    return collection


def light_the_world(scene) -> None:
    world = bpy.data.worlds.new("Studio")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.6
    scene.world = world
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(40), math.radians(15), math.radians(30))
    scene.collection.objects.link(sun)


def render(scene, camera, path: Path, transparent: bool) -> Image.Image:
    scene.camera = camera
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.cycles.use_denoising = False
    scene.render.film_transparent = transparent
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return Image.open(path).convert("RGBA")


def three_quarter_camera(scene, collection) -> bpy.types.Object:
    """A perspective camera looking at the centre of the imported objects from the front-left, above."""
    points = [obj.matrix_world @ Vector(corner) for obj in collection.objects if obj.type == "MESH"
              for corner in obj.bound_box]
    centre = sum(points, Vector()) / len(points)
    radius = max((p - centre).length for p in points)
    camera = bpy.data.objects.new("Three-quarter view", bpy.data.cameras.new("Three-quarter view"))
    camera.data.lens = 40
    camera.location = centre + Vector((-1.2, -1.6, 1.1)).normalized() * radius * 3.2
    camera.rotation_euler = (centre - camera.location).to_track_quat("-Z", "Y").to_euler()
    scene.collection.objects.link(camera)
    return camera


def main(folder: str, image_path: str, output: str) -> None:
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    collection = import_job(Path(folder), Path(image_path))
    solved_camera = scene.camera
    light_the_world(scene)
    with tempfile.TemporaryDirectory() as temp:
        overlay = render(scene, solved_camera, Path(temp) / "solved.png", transparent=True)
        scene.render.resolution_x, scene.render.resolution_y = overlay.size
        view = render(scene, three_quarter_camera(scene, collection), Path(temp) / "view.png", transparent=False)
    reference = Image.open(image_path).convert("RGBA").resize(overlay.size)
    left = Image.alpha_composite(reference, overlay)
    panels = [panel.resize((round(panel.width * PANEL_HEIGHT / panel.height), PANEL_HEIGHT)) for panel in (left, view)]
    sheet = Image.new("RGB", (sum(p.width for p in panels), PANEL_HEIGHT))
    x = 0
    for panel in panels:
        sheet.paste(panel.convert("RGB"), (x, 0))
        x += panel.width
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output, optimize=True)
    print(f"{output}: {sheet.width}x{sheet.height}, {len(collection.objects)} objects in {collection.name!r}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
