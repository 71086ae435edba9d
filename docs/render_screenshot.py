"""Render the README screenshot headlessly: a generated scene imported by the extension's own importer.

    iscene-server generate --model models/tiny --image examples/living_room.png \\
        --labels examples/living_room_labels.png --out results/demo
    python docs/render_screenshot.py results/demo examples/living_room.png docs/screenshot.png

Needs the ``bpy`` wheel (a test dependency) and Pillow. The left half is the imported scene seen through the
solved camera, laid over the reference image; the right half is a three-quarter view of the same objects in
Blender's default Solid shading (Workbench: the viewport colours the importer sets from the vertex colours),
standing on a floor of 1 m tiles at the 3D cursor, the scene ROOM_WIDTH metres wide.
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
from iscene_blender import importer, provenance

ROOM_WIDTH = 4.0
PANEL_HEIGHT = 480


def import_job(folder: Path, image_path: Path) -> list:
    """The job's objects, imported as the add-on does (at the cursor, in metres); returns the meshes."""
    manifest = json.loads((folder / "scene.json").read_text())
    files = {e["file"]: (folder / e["file"]).read_bytes() for e in manifest["instances"] if e.get("file")}
    image = bpy.data.images.load(str(image_path))
    scene = bpy.context.scene
    root = importer.import_scene(scene, folder.name, image_path.stem, manifest, files, image, ROOM_WIDTH)
    bpy.context.view_layer.update()
    return [obj for obj in provenance.members(root) if obj.type == "MESH"]


def grid_floor(scene, size: float) -> None:
    """A floor of 1 m checker tiles on the cursor's plane, to show where the scene stands and how big it is."""
    tiles = int(size)
    for parity, grey in ((0, 0.85), (1, 0.6)):
        vertices, faces = [], []
        for y in range(tiles):
            for x in range(tiles):
                if (x + y) % 2 != parity:
                    continue
                x0, y0 = x - tiles / 2, y - tiles / 2
                faces.append(tuple(range(len(vertices), len(vertices) + 4)))
                vertices += [(x0, y0, 0.0), (x0 + 1, y0, 0.0), (x0 + 1, y0 + 1, 0.0), (x0, y0 + 1, 0.0)]
        mesh = bpy.data.meshes.new(f"Floor {parity}")
        mesh.from_pydata(vertices, [], faces)
        floor = bpy.data.objects.new(f"Floor {parity}", mesh)
        floor.location = scene.cursor.location
        floor.color = (grey, grey, grey, 1.0)
        scene.collection.objects.link(floor)


def light_the_world(scene) -> None:
    world = bpy.data.worlds.new("Studio")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.6
    scene.world = world
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(40), math.radians(15), math.radians(30))
    scene.collection.objects.link(sun)


def render(scene, camera, path: Path, transparent: bool, solid: bool = False,
           colour_type: str = "OBJECT") -> Image.Image:
    """A still through ``camera``: Cycles, or with ``solid`` what the viewport's Solid shading shows, coloured by
    ``colour_type`` ("OBJECT": the viewport colour the importer sets; "VERTEX": the colour attribute; "TEXTURE")."""
    scene.camera = camera
    if solid:
        scene.render.engine = "BLENDER_WORKBENCH"
        scene.display.shading.light = "STUDIO"
        scene.display.shading.color_type = colour_type
        scene.display.shading.show_object_outline = True
    else:
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


def three_quarter_camera(scene, meshes) -> bpy.types.Object:
    """A perspective camera looking at the centre of the imported objects from the front-left, above."""
    points = [obj.matrix_world @ Vector(corner) for obj in meshes for corner in obj.bound_box]
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
    meshes = import_job(Path(folder), Path(image_path))
    solved_camera = scene.camera
    light_the_world(scene)
    with tempfile.TemporaryDirectory() as temp:
        overlay = render(scene, solved_camera, Path(temp) / "solved.png", transparent=True)
        scene.render.resolution_x, scene.render.resolution_y = overlay.size
        grid_floor(scene, ROOM_WIDTH * 2)
        view = render(scene, three_quarter_camera(scene, meshes), Path(temp) / "view.png", transparent=False,
                      solid=True)
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
    print(f"{output}: {sheet.width}x{sheet.height}, {len(meshes)} objects, {ROOM_WIDTH} m wide")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
