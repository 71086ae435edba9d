"""Per-scene settings (saved with the .blend) and the per-object lock toggle. The token is never here: it
lives in the add-on preferences."""

from __future__ import annotations

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty

from .masks import PixelCache, linked_label_map

_LABEL_COUNTS = PixelCache()


def label_count(image) -> int:
    """Distinct non-zero colours of a label-map image (what the server will count as instances)."""
    if image is None or not image.size[0] or not image.size[1]:
        return 0
    return _LABEL_COUNTS.get(image, lambda: _count_colours(image))


def _count_colours(image) -> int:
    width, height = image.size
    pixels = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(pixels)
    rgb = np.round(pixels.reshape(-1, 4)[:, :3] * 255).astype(np.int64)
    return int((np.unique(rgb[:, 0] + (rgb[:, 1] << 8) + (rgb[:, 2] << 16)) != 0).sum())


def _image_changed(settings, _context) -> None:
    """Choosing an image picks the label map made (or last used) for it."""
    labels = linked_label_map(settings.image)
    if labels is not None:
        settings.labels = labels


class ISceneSettings(bpy.types.PropertyGroup):
    image: PointerProperty(name="Image", type=bpy.types.Image, description="The reference image",
                           update=_image_changed)
    labels: PointerProperty(name="Label Map", type=bpy.types.Image,
                            description="One flat colour or id per object, background 0 (black)")
    seed: IntProperty(name="Seed", default=42, min=0, max=2 ** 31 - 1)
    detail: EnumProperty(name="Detail", default="medium", items=[
        ("low", "Low", "About 15k faces per object"), ("medium", "Medium", "About 50k faces per object"),
        ("high", "High", "About 200k faces per object")])
    steps: IntProperty(name="Steps", default=25, min=1, max=100, description="Sampling steps of each stage")
    scene_size: FloatProperty(name="Scene Size", default=4.0, min=0.01, soft_max=100.0, unit="LENGTH",
                              description="Size in the world of the generated scene's cube")
    strength: FloatProperty(name="Strength", default=0.5, min=0.0, max=1.0,
                            description="Refine: 0 keeps the moved shapes, 1 re-generates them")
    refine_selected: BoolProperty(name="Selected Only", default=True,
                                  description="Refine only the selected objects (the others stay as they are)")
    points_per_side: IntProperty(name="Grid", default=16, min=4, max=64,
                                 description="Auto-segment: prompt points along each side of the image")
    show_overlay: BoolProperty(name="Show Label Overlay", default=True,
                               description="Draw the label map's colours over the image in the Image Editor")
    overlay_opacity: FloatProperty(name="Opacity", default=0.45, min=0.0, max=1.0, subtype="FACTOR")


def register():
    bpy.utils.register_class(ISceneSettings)
    bpy.types.Scene.iscene = PointerProperty(type=ISceneSettings)
    bpy.types.Object.iscene_locked = BoolProperty(name="Lock", default=False,
                                                  description="Refine keeps this object exactly as it is")


def unregister():
    del bpy.types.Object.iscene_locked
    del bpy.types.Scene.iscene
    bpy.utils.unregister_class(ISceneSettings)
    _LABEL_COUNTS.clear()
