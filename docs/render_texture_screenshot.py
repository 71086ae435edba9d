"""Render the README's texture figure headlessly: what the baked texture keeps of the extracted mesh's colours.

    python docs/render_texture_screenshot.py docs/textures.png

A painted vase stands in for an extracted object: a dense mesh of ~1.3M triangles (what FlexiCubes extracts at
256³) whose vertex colours are an analytic pattern finer than the decimated mesh's triangles. It goes through the
server's own clean-up (``engine/cleanup.py``: floaters, decimation to the "low" detail's faces, the bake) and GLB
writer twice, ``texture: "vertex"`` and ``texture: "baked"`` (1024², the default), and each GLB through the
extension's own importer. Three panels in Blender's Solid shading (Workbench), one camera: the dense mesh's vertex
colours (the reference), the decimated mesh's vertex colours, the decimated mesh with its baked texture.
Needs the ``bpy`` wheel (a test dependency), trimesh and Pillow.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import bpy
import numpy as np
import trimesh
from mathutils import Vector
from PIL import Image, ImageDraw, ImageFont
from render_screenshot import PANEL_HEIGHT, render

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iscene_blender import importer
from iscene_server.engine.cleanup import CleanupTask, clean_mesh
from iscene_server.geometry.glb_writer import ExportInstance, glb_bytes
from iscene_server.geometry.postprocess import ColoredMesh
from iscene_server.jobs.runner import DETAIL_FACES

DETAIL = "low"
TEXTURE_SIZE = 1024
PANEL_WIDTH = 400
BACKDROP, INK = (232, 232, 228, 255), (40, 40, 40)
CREAM, COBALT, TERRACOTTA = np.array([0.93, 0.89, 0.80]), np.array([0.10, 0.22, 0.58]), np.array([0.78, 0.33, 0.16])


def vase(subdivisions: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and faces of a closed vase 0.9 units tall: an icosphere whose rings follow a potter's profile."""
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    unit = np.asarray(sphere.vertices)
    z = unit[:, 2]
    radius = 0.22 + 0.10 * np.sin(0.8 - 2.4 * z) + 0.03 * np.cos(7 * z)  # [V] bulging body, narrow neck on top
    ring = np.sqrt(np.clip(1 - z ** 2, 0, 1)) ** 0.35  # flattens the poles into a foot and a lip
    xy = unit[:, :2] / np.maximum(np.linalg.norm(unit[:, :2], axis=1, keepdims=True), 1e-9) * (radius * ring)[:, None]
    return np.concatenate([xy, 0.45 * z[:, None]], axis=1), np.asarray(sphere.faces)


def painted(points: np.ndarray) -> np.ndarray:
    """Colours ``[N, 3]`` of a glaze pattern at ``points [N, 3]``: a zig-zag band, thin rings, a band of dots."""
    angle = np.arctan2(points[:, 1], points[:, 0])  # [N]
    z = points[:, 2]
    colours = np.broadcast_to(CREAM, points.shape).copy()
    zigzag = 0.05 + 0.035 * (2 * np.abs(((angle * 14 / (2 * np.pi)) % 1) - 0.5) * 2 - 1)  # [N] the line's height
    colours[np.abs(z - zigzag) < 0.008] = COBALT
    rings = (np.abs(z + 0.12) < 0.05) & (np.sin(2 * np.pi * z / 0.02) > 0.3)
    colours[rings] = COBALT
    cell = np.stack([(angle * 24 / (2 * np.pi)) % 1 - 0.5, ((z - 0.20) / 0.045) % 1 - 0.5], axis=1)  # [N, 2]
    dots = (np.abs(z - 0.22) < 0.06) & ((cell[:, 0] * 1.6) ** 2 + cell[:, 1] ** 2 < 0.09)
    colours[dots] = TERRACOTTA
    return colours


def cleaned(dense: ColoredMesh, texture_size: int | None) -> ColoredMesh:
    """The dense mesh through the server's clean-up, as a job at the "low" detail runs it."""
    task = CleanupTask(label=1, mesh=dense, min_fraction=0.02, target_faces=DETAIL_FACES[DETAIL],
                       texture_size=texture_size)
    return clean_mesh(task).value


def imported(name: str, mesh: ColoredMesh, vertex_colors: bool) -> bpy.types.Object:
    """``mesh`` written by the server's GLB writer and read back by the extension's importer."""
    data = glb_bytes([ExportInstance(mesh, 1, 0, {})], vertex_colors=vertex_colors)
    blender_mesh, _, colour, _, image = importer.build_mesh(name, data, 1.0, origin=(0.0, 0.0, 0.0))
    blender_mesh.materials.append(importer.colour_material(name, colour, image))
    obj = bpy.data.objects.new(name, blender_mesh)
    obj.color = colour
    bpy.context.scene.collection.objects.link(obj)
    return obj


def camera_on(scene, target: Vector) -> bpy.types.Object:
    camera = bpy.data.objects.new("View", bpy.data.cameras.new("View"))
    camera.data.lens = 85
    camera.location = target + Vector((0.0, -1.0, 0.28)).normalized() * 3.0
    camera.rotation_euler = (target - camera.location).to_track_quat("-Z", "Y").to_euler()
    scene.collection.objects.link(camera)
    return camera


def solo(shown: bpy.types.Object, objects: list) -> None:
    for obj in objects:
        obj.hide_render = obj is not shown


def main(output: str) -> None:
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = PANEL_WIDTH, PANEL_HEIGHT
    vertices, faces = vase()
    dense = ColoredMesh(vertices, faces, painted(vertices))
    panels = [(f"extracted, {dense.face_count:,} faces", imported("dense", dense, True), "VERTEX")]
    vertex = cleaned(dense, None)
    panels.append((f"vertex colours, {vertex.face_count:,} faces", imported("vertex", vertex, True), "VERTEX"))
    baked = cleaned(dense, TEXTURE_SIZE)
    caption = f"baked {TEXTURE_SIZE} x {TEXTURE_SIZE} texture, {baked.face_count:,} faces"
    panels.append((caption, imported("baked", baked, False), "TEXTURE"))
    camera = camera_on(scene, Vector((0.0, 0.0, -0.01)))
    objects = [obj for _, obj, _ in panels]
    images = []
    with tempfile.TemporaryDirectory() as temp:
        for index, (caption, obj, colour_type) in enumerate(panels):
            solo(obj, objects)
            image = render(scene, camera, Path(temp) / f"{index}.png", transparent=True, solid=True,
                           colour_type=colour_type)
            panel = Image.alpha_composite(Image.new("RGBA", image.size, BACKDROP), image)
            ImageDraw.Draw(panel).text((PANEL_WIDTH // 2, PANEL_HEIGHT - 22), caption, fill=INK, anchor="ms",
                                       font=ImageFont.load_default(size=17))
            images.append(panel)
    sheet = Image.new("RGB", (PANEL_WIDTH * len(images), PANEL_HEIGHT))
    for index, image in enumerate(images):
        sheet.paste(image.convert("RGB"), (index * PANEL_WIDTH, 0))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output, optimize=True)
    print(f"{output}: {sheet.width}x{sheet.height}; " + "; ".join(caption for caption, _, _ in panels))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
