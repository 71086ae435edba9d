"""Instance masks without leaving Blender: the Annotate strokes drawn over an image (made into prompts by
:mod:`.prompts`), and the label map the server makes, kept as an image datablock linked to that image."""

from __future__ import annotations

from pathlib import Path

import bpy

from .pixels import PALETTE
from .prompts import Stroke

LABEL_MAP = "iscene_label_map"  # on a source image: its label map (an ID pointer)
SOURCE = "iscene_source"  # on a label map: the name of the image it was made for


def annotation_strokes(annotation) -> list[Stroke]:
    """The strokes of the visible layers of an annotation datablock, at its current frame."""
    strokes = []
    for layer in annotation.layers:
        if layer.annotation_hide:
            continue
        frame = layer.active_frame or (layer.frames[0] if len(layer.frames) else None)
        if frame is None:
            continue
        for stroke in frame.strokes:
            points = tuple((float(p.co[0]), float(p.co[1])) for p in stroke.points)
            if points:
                strokes.append(Stroke(layer.info, points))
    return strokes


def annotation_for(context, image, name: str = ""):
    """The annotation to read prompts from: the named datablock, the Image Editor's in context, or that of any
    Image Editor showing ``image``."""
    if name:
        return bpy.data.grease_pencils.get(name)
    space = getattr(context, "space_data", None)
    spaces = [space] if space is not None and space.type == "IMAGE_EDITOR" else []
    for space in spaces + list(image_editors(context)):
        if space.image == image and space.grease_pencil is not None:
            return space.grease_pencil
    return None


def image_editors(context):
    """The spaces of every Image Editor open in Blender's windows (none in a headless Blender)."""
    for window in getattr(context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                yield area.spaces.active


def active_image(context):
    """The image the artist has in front of them: the active image empty's, else an Image Editor's."""
    obj = context.active_object
    if obj is not None and obj.type == "EMPTY" and obj.empty_display_type == "IMAGE" and obj.data is not None:
        return obj.data
    return next((space.image for space in image_editors(context) if space.image is not None), None)


def linked_label_map(image):
    """The label map made (or chosen) for ``image``, if it still exists."""
    if image is None:
        return None
    labels = image.get(LABEL_MAP)
    return labels if isinstance(labels, bpy.types.Image) else None


def link_label_map(image, labels) -> None:
    image[LABEL_MAP] = labels
    labels[SOURCE] = image.name


def image_stem(image) -> str:
    """``living_room`` for an image named ``living_room.png``."""
    return Path(image.name).stem or image.name


def store_label_map(image, path: Path, segments: list[dict]):
    """Load the server's label map (a palette PNG: one colour per object, black background) as an image
    datablock packed into the .blend, link it to ``image`` and return it. ``segments`` (the job's
    segments.json) give each palette colour's id, so the add-on counts objects exactly as the server will."""
    labels = bpy.data.images.load(str(path), check_existing=False)
    labels.name = f"{image_stem(image)}_labels"
    labels[PALETTE] = {str(c[0] | (c[1] << 8) | (c[2] << 16)): int(s["id"]) for s in segments
                       for c in [s["colour"]]}
    labels.colorspace_settings.name = "Non-Color"  # ids, not colours: painting must not shift them
    labels.pack()
    link_label_map(image, labels)
    return labels
