"""Segmentation prompts: the one model of what to segment, and its check against the image it will run on.

:class:`SegmentPrompts` is the ``prompts`` JSON of ``POST /v1/segment`` and ``iscene-server segment`` (its schema
settles types, ranges and unknown fields, and is what a job stores); :func:`parse_prompts` then meets the image:
boxes are clipped to it and must overlap it, points must lie on it, and a request must name something to
segment. Coordinates are image pixels, origin top-left, x right, y down.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError

MAX_OBJECTS = 255  # ids 1..255 of an 8-bit palette label map
MAX_POINTS = 64  # positive (and, separately, negative) points per object
NO_PROMPTS_HINT = "draw at least one box or point, or use auto"

Point = tuple[float, float]
Box = tuple[float, float, float, float]


class _PromptModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class ObjectPrompt(_PromptModel):
    """One object to segment: a box and/or positive points, optionally negative points."""

    box: Box | None = Field(None, description="[x0, y0, x1, y1] in image pixels (origin top-left, y down); "
                                              "clipped to the image")
    points: tuple[Point, ...] = Field((), max_length=MAX_POINTS, description="[[x, y], ...] on the object")
    negative: tuple[Point, ...] = Field((), max_length=MAX_POINTS, description="[[x, y], ...] not on it")

    @property
    def multimask(self) -> bool:
        """A lone positive point is ambiguous (part, object, group): let SAM propose three masks, keep the best."""
        return self.box is None and len(self.points) == 1 and not self.negative

    @property
    def batch_key(self) -> tuple[bool, int, int]:
        """Prompts with the same key have the same tensor shapes and can be decoded in one batch."""
        return self.box is not None, len(self.points) + len(self.negative), int(self.multimask)


class SegmentPrompts(_PromptModel):
    """The ``prompts`` JSON of ``POST /v1/segment``: ``objects`` (one mask each, at most 255) or ``auto``."""

    objects: tuple[ObjectPrompt, ...] = Field((), description="one mask per object, ids in this order")
    auto: bool = Field(False, description="find the objects over a grid of points instead of prompts")
    points_per_side: int = Field(16, ge=4, le=64, description="auto: grid points per image side")
    min_area: float = Field(0.0005, ge=0, le=1,
                            description="drop connected fragments smaller than this fraction of the image")
    fill_holes: bool = Field(False, description="fill background holes inside each mask")
    min_score: float = Field(0.88, ge=0, le=1, description="auto: least predicted IoU of a mask")
    min_stability: float = Field(0.92, ge=0, le=1, description="auto: least stability score of a mask")

    @property
    def mode(self) -> str:
        return "auto" if self.auto else "prompts"


def parse_prompts(data: SegmentPrompts | Mapping, image_size: tuple[int, int]) -> SegmentPrompts:
    """The prompts (a :class:`SegmentPrompts`, or the mapping a job stored) for an image of ``image_size`` (width,
    height), boxes clipped to it; every problem is an :class:`InputError`."""
    prompts = data if isinstance(data, SegmentPrompts) else _validated(data)
    if prompts.auto and prompts.objects:
        raise InputError("the prompts have both objects and auto: true",
                         "send objects (boxes/points) or auto: true, not both")
    if not prompts.auto and not prompts.objects:
        raise InputError("no prompts: the request names no object to segment", NO_PROMPTS_HINT)
    if len(prompts.objects) > MAX_OBJECTS:
        raise InputError(f"{len(prompts.objects)} objects were sent, more than the {MAX_OBJECTS} a label map can "
                         f"hold", f"segment at most {MAX_OBJECTS} objects at once")
    objects = tuple(_object(index, entry, image_size) for index, entry in enumerate(prompts.objects))
    return prompts.model_copy(update={"objects": objects})


def _validated(data: Mapping) -> SegmentPrompts:
    """Stored prompts passed the schema when the job was submitted; a failure here means another version wrote
    them."""
    try:
        return SegmentPrompts.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"the prompts do not fit this server's SegmentPrompts ({exc.error_count()} problem(s), "
                         f"first: {'.'.join(map(str, first['loc']))}: {first['msg']})",
                         "submit the prompts again (see SegmentPrompts in /docs)") from None


def _object(index: int, entry: ObjectPrompt, image_size: tuple[int, int]) -> ObjectPrompt:
    points = tuple(_point(index, "points", p, image_size) for p in entry.points)
    negative = tuple(_point(index, "negative", p, image_size) for p in entry.negative)
    box = entry.box
    if box is None and not points:
        raise InputError(f"object {index} has no box and no positive point",
                         "give every object a box or at least one point on it (negative points alone select nothing)")
    return ObjectPrompt(box=None if box is None else _clip_box(index, box, image_size), points=points,
                        negative=negative)


def _point(index: int, kind: str, point: Point, image_size: tuple[int, int]) -> Point:
    width, height = image_size
    x, y = float(point[0]), float(point[1])
    if not (0 <= x < width and 0 <= y < height):
        raise InputError(f"object {index}: point ({x:g}, {y:g}) in {kind} lies outside the {width}×{height} image",
                         f"points are image pixels: 0 <= x < {width}, 0 <= y < {height}, origin top-left")
    return x, y


def _clip_box(index: int, box: Box, image_size: tuple[int, int]) -> Box:
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
