"""Instance masks without leaving Blender: Annotate strokes drawn over an image become Segment Anything prompts,
and the label map the server makes becomes an image datablock linked to that image.

Prompt rules (pixel coordinates of the image, origin top-left, as the server expects):

* every stroke on a visible annotation layer is one object: a stroke that spans more than a few pixels is
  the box around its points; a click (a dot) is a positive point;
* a dot inside an object's box is added to that object as a positive point instead of being an object;
* dots on a layer whose name starts with "neg" (for example "Negative") are negative points ("not this"),
  given to every object whose box contains them, or to every object if no box does.

In the Image Editor annotation coordinates are normalised over the image: (0, 0) is its bottom-left corner
and (1, 1) its top-right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bpy

from .pixels import PALETTE

LABEL_MAP = "iscene_label_map"  # on a source image: its label map (an ID pointer)
SOURCE = "iscene_source"  # on a label map: the name of the image it was made for
DOT_PIXELS = 6.0  # a stroke whose extent is at most this (or 1% of the image diagonal) is a click


@dataclass(frozen=True)
class Stroke:
    layer: str
    points: tuple[tuple[float, float], ...]  # normalised image coordinates, y up


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


def _pixels(stroke: Stroke, width: int, height: int) -> list[tuple[float, float]]:
    return [(x * width, (1.0 - y) * height) for x, y in stroke.points]


def _inside(point, box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def prompts_from_strokes(strokes: list[Stroke], width: int, height: int) -> dict:
    """The server's prompt JSON (``{"objects": [...]}``) for annotation strokes over a ``width``×``height`` image."""
    dot = max(DOT_PIXELS, 0.01 * (width ** 2 + height ** 2) ** 0.5)
    objects, dots, negatives = [], [], []
    for stroke in strokes:
        pixels = _pixels(stroke, width, height)
        xs, ys = [p[0] for p in pixels], [p[1] for p in pixels]
        box = [min(xs), min(ys), max(xs), max(ys)]
        centre = [round((box[0] + box[2]) / 2, 2), round((box[1] + box[3]) / 2, 2)]
        if stroke.layer.lower().startswith("neg"):
            negatives.append(centre)
        elif max(box[2] - box[0], box[3] - box[1]) <= dot:
            dots.append(centre)
        else:
            objects.append({"box": [round(v, 2) for v in box]})
    for point in dots:
        owner = next((o for o in objects if "box" in o and _inside(point, o["box"])), None)
        if owner is None:
            objects.append({"points": [point]})
        else:
            owner.setdefault("points", []).append(point)
    for point in negatives:
        owners = [o for o in objects if "box" in o and _inside(point, o["box"])] or objects
        for owner in owners:
            owner.setdefault("negative", []).append(point)
    return {"objects": objects}


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
