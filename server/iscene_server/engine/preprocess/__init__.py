"""Image preprocessing: scene image + instance label map → per-instance slot images (518×518 float32)."""

from .images import (
    DEFAULT_MAX_PIXELS,
    ImageSource,
    SceneInput,
    decode_label_map,
    load_scene,
    open_image,
    scene_from_arrays,
    to_rgb,
)
from .lanczos import resize_lanczos4, resize_lanczos4_rows
from .slots import (
    CANONICAL_SPACE_INSTANCE,
    SCENE_SPACE_INSTANCE,
    SCENE_SPACE_SCENE,
    SLOT_SIZE,
    Box,
    SceneSlots,
    build_slots,
    crop,
    crop_bbox,
    pixel_box,
    slot_names,
)

__all__ = [
    "CANONICAL_SPACE_INSTANCE",
    "DEFAULT_MAX_PIXELS",
    "SCENE_SPACE_INSTANCE",
    "SCENE_SPACE_SCENE",
    "SLOT_SIZE",
    "Box",
    "ImageSource",
    "SceneInput",
    "SceneSlots",
    "build_slots",
    "crop",
    "crop_bbox",
    "decode_label_map",
    "load_scene",
    "open_image",
    "pixel_box",
    "resize_lanczos4",
    "resize_lanczos4_rows",
    "scene_from_arrays",
    "slot_names",
    "to_rgb",
]
