"""Segmentation requests in pixel space: what to segment, checked against the image it will run on.

The input is the ``prompts`` JSON after its schema check (``SegmentPrompts.model_dump()``, which is also what a
job stores): types, ranges and unknown fields are settled there. Here the prompts meet the image: boxes are
clipped to it and must overlap it, points must lie on it, and a request must name something to segment.
Coordinates are image pixels, origin top-left, x right, y down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InputError

MAX_OBJECTS = 255  # ids 1..255 of an 8-bit palette label map
NO_PROMPTS_HINT = "draw at least one box or point, or use auto"

Point = tuple[float, float]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ObjectPrompt:
    """One object: a box (already clipped to the image) and/or positive points, optional negative points."""

    box: Box | None
    points: tuple[Point, ...]
    negative: tuple[Point, ...] = ()

    @property
    def multimask(self) -> bool:
        """A lone positive point is ambiguous (part, object, group): let SAM propose three masks, keep the best."""
        return self.box is None and len(self.points) == 1 and not self.negative

    @property
    def batch_key(self) -> tuple[bool, int, int]:
        """Prompts with the same key have the same tensor shapes and can be decoded in one batch."""
        return self.box is not None, len(self.points) + len(self.negative), int(self.multimask)


@dataclass(frozen=True)
class SegmentRequest:
    objects: tuple[ObjectPrompt, ...]  # empty in auto mode
    auto: bool = False
    points_per_side: int = 16
    min_area: float = 0.0005  # fraction of the image area
    fill_holes: bool = False
    min_score: float = 0.88
    min_stability: float = 0.92

    @property
    def mode(self) -> str:
        return "auto" if self.auto else "prompts"


def parse_prompts(data: Mapping, image_size: tuple[int, int]) -> SegmentRequest:
    """The request for an image of ``image_size`` (width, height); every problem is an :class:`InputError`."""
    objects = list(data.get("objects") or [])
    auto = bool(data.get("auto", False))
    if auto and objects:
        raise InputError("the prompts have both objects and auto: true",
                         "send objects (boxes/points) or auto: true, not both")
    if not auto and not objects:
        raise InputError("no prompts: the request names no object to segment", NO_PROMPTS_HINT)
    if len(objects) > MAX_OBJECTS:
        raise InputError(f"{len(objects)} objects were sent, more than the {MAX_OBJECTS} a label map can hold",
                         f"segment at most {MAX_OBJECTS} objects at once")
    options = {key: data[key] for key in ("points_per_side", "min_area", "fill_holes", "min_score", "min_stability")
               if key in data}
    parsed = tuple(_object(index, entry, image_size) for index, entry in enumerate(objects))
    return SegmentRequest(objects=parsed, auto=auto, **options)


def _object(index: int, entry: Mapping, image_size: tuple[int, int]) -> ObjectPrompt:
    points = tuple(_point(index, "points", p, image_size) for p in entry.get("points") or ())
    negative = tuple(_point(index, "negative", p, image_size) for p in entry.get("negative") or ())
    box = entry.get("box")
    if box is None and not points:
        raise InputError(f"object {index} has no box and no positive point",
                         "give every object a box or at least one point on it (negative points alone select nothing)")
    return ObjectPrompt(box=None if box is None else _clip_box(index, box, image_size), points=points,
                        negative=negative)


def _point(index: int, kind: str, point, image_size: tuple[int, int]) -> Point:
    width, height = image_size
    x, y = float(point[0]), float(point[1])
    if not (0 <= x < width and 0 <= y < height):
        raise InputError(f"object {index}: point ({x:g}, {y:g}) in {kind} lies outside the {width}×{height} image",
                         f"points are image pixels: 0 <= x < {width}, 0 <= y < {height}, origin top-left")
    return x, y


def _clip_box(index: int, box, image_size: tuple[int, int]) -> Box:
    width, height = image_size
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise InputError(f"object {index}: box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] has no area",
                         "a box is [x0, y0, x1, y1] with x1 > x0 and y1 > y0 (top-left, then bottom-right corner)")
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        raise InputError(f"object {index}: box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] lies outside the "
                         f"{width}×{height} image", "draw the box on the image (pixels, origin top-left)")
    return clipped
