"""Segment Anything prompts from Annotate strokes drawn over an image (pure Python: no ``bpy``).

Prompt rules (pixel coordinates of the image, origin top-left, as the server expects):

* every stroke on a visible annotation layer is one object: a stroke that spans more than a few pixels is
  the box around its points; a click (a dot) is a positive point;
* a dot inside an object's box is added to that object as a positive point instead of being an object;
* dots on a layer whose name starts with "neg" (for example "Negative") are negative points ("not this"),
  given to every object whose box contains them, or to every object if no box does.

Stroke points are normalised over the image, as the Image Editor's annotations are: (0, 0) is its bottom-left
corner and (1, 1) its top-right. The JSON made here is the ``prompts`` field of the server's ``POST
/v1/segment``; ``tests/test_addon_copies.py`` checks that the server accepts it as meant.
"""

from __future__ import annotations

from dataclasses import dataclass

DOT_PIXELS = 6.0  # a stroke whose extent is at most this (or 1% of the image diagonal) is a click


@dataclass(frozen=True)
class Stroke:
    layer: str
    points: tuple[tuple[float, float], ...]  # normalised image coordinates, y up


def _pixels(stroke: Stroke, width: int, height: int) -> list[tuple[float, float]]:
    return [(x * width, (1.0 - y) * height) for x, y in stroke.points]


def _onto_last_pixel(value: float, size: int) -> float:
    """A coordinate on the image's far edge (``value == size``: a click on its right or bottom border) as the
    centre of the last pixel, which is where the artist clicked; pixels are ``0 <= v < size`` for the server."""
    return size - 0.5 if size - 0.5 < value <= size else value


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
        centre = [round(_onto_last_pixel((box[0] + box[2]) / 2, width), 2),
                  round(_onto_last_pixel((box[1] + box[3]) / 2, height), 2)]
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


def auto_prompts(points_per_side: int) -> dict:
    """The prompt JSON that asks the server to find the objects itself, over a grid of points."""
    return {"auto": True, "points_per_side": points_per_side}
