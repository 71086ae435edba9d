"""Request and response bodies of the ``/v1`` API (they are also the OpenAPI schema)."""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InputError
from ..segment.prompts import SegmentRequest

Label = int


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


Body = TypeVar("Body", bound=BaseModel)


MAX_FIELD_CHARS = 1_000_000  # a form JSON field; the largest valid prompts (255 objects x 128 points) fit
MAX_JSON_DEPTH = 16  # nesting levels of [ and {; the schemas need 4
MAX_INT_DIGITS = 20
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def check_json_limits(text: str, name: str) -> None:
    """Refuse a JSON form field over the size or nesting limits before parsing it (a parser would recurse
    once per level)."""
    if len(text) > MAX_FIELD_CHARS:
        raise InputError(f"{name} is {len(text):,} characters long, over the limit of {MAX_FIELD_CHARS:,}",
                         f"send {name} as a small JSON object; see /docs for its fields")
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            raise InputError(f"{name} is nested more than {MAX_JSON_DEPTH} levels deep",
                             f"send {name} as a flat JSON object; see /docs for its fields")


def _bounded_int(digits: str, name: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise InputError(f"{name} holds a {len(digits.lstrip('-')):,}-digit number, over the limit of "
                         f"{MAX_INT_DIGITS} digits", "every number in the API fits in a few digits")
    return int(digits)


def parse_json_field(text: str, model: type[Body], name: str, example: str) -> Body:
    """A JSON form field (``params``, ``prompts``) as ``model``; every problem is an :class:`InputError`
    naming the field, with ``example`` (a JSON object) in the hint."""
    check_json_limits(text or "", name)
    try:
        data = json.loads(text or "{}", parse_int=partial(_bounded_int, name=name))
    except json.JSONDecodeError as exc:
        raise InputError(f"{name} is not valid JSON ({exc.msg} at position {exc.pos})",
                         f"send {name} as a JSON object, e.g. {example}") from None
    if not isinstance(data, dict):
        raise InputError(f"{name} must be a JSON object", f"e.g. {example}")
    try:
        return model(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise InputError(f"invalid {name}: {problems}", f"see {model.__name__} in /docs") from None


class GenerationParams(StrictModel):
    """The ``params`` JSON of ``POST /v1/jobs``; every field is optional."""

    seed: int = Field(42, ge=0, le=2 ** 31 - 1, description="scene seed (also each object's, unless regenerated)")
    steps: int | None = Field(None, ge=1, le=100, description="stage-1 sampling steps (default 25)")
    cfg: float | None = Field(None, ge=0, le=20, description="stage-1 guidance strength (default 3.0)")
    slat_steps: int | None = Field(None, ge=1, le=100, description="stage-2 sampling steps (default 25)")
    slat_cfg: float | None = Field(None, ge=0, le=20, description="stage-2 guidance strength (default 3.0)")
    detail: Literal["low", "medium", "high"] = Field("medium", description="faces per object: 15k, 50k or 200k")
    target_faces: int | None = Field(None, ge=500, le=2_000_000, description="faces per object (overrides detail)")
    formats: list[Literal["mesh", "gaussian"]] = Field(["mesh"], min_length=1, max_length=2)
    labels: list[Label] | None = Field(None, min_length=1, max_length=100, description="only these instances")
    min_floater: float = Field(0.02, ge=0, le=1, description="drop mesh parts smaller than this fraction")
    mesh_grid: Literal["iscene", "trellis"] = "iscene"
    name: str | None = Field(None, max_length=200, description="what job lists call the scene, e.g. the image's "
                             "file name (not used by the model)")


class RegenerateBody(StrictModel):
    labels: list[Label] = Field(..., min_length=1, max_length=100, description="instances to re-sample")
    seeds: dict[Label, int] | None = Field(None, description="seed per label (default: new random seeds)")

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, seeds):
        if seeds and any(not 0 <= s < 2 ** 31 for s in seeds.values()):
            raise ValueError("seeds must be in [0, 2^31)")
        return seeds


class FiniteModel(StrictModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Matrix = list[list[float]]
MAX_TRANSLATION = 10.0  # scene units; the scene volume is the cube [-0.5, 0.5]^3


class RefineBody(FiniteModel):
    transforms: dict[Label, Matrix] = Field(default_factory=dict, max_length=100,
                                            description="4x4 matrix per label in the scene frame (column vectors); "
                                                        f"finite, translations within ±{MAX_TRANSLATION:g}")
    locked: list[Label] = Field(default_factory=list, max_length=100, description="instances kept exactly")
    strength: float = Field(0.5, ge=0, le=1, description="0 keeps the moved shapes, 1 re-generates from noise")
    seed: int | None = Field(None, ge=0, le=2 ** 31 - 1, description="noise seed (default: random)")

    @field_validator("transforms")
    @classmethod
    def _bounded_translation(cls, transforms):
        for label, matrix in transforms.items():
            translation = [row[3] for row in matrix[:3] if len(row) == 4]  # other shapes: refused by the engine
            if any(abs(t) > MAX_TRANSLATION for t in translation):
                raise ValueError(f"the translation of instance {label} ({translation}) is beyond ±{MAX_TRANSLATION:g} "
                                 "scene units: the scene volume is the cube [-0.5, 0.5]^3")
        return transforms


Point = tuple[float, float]


class SegmentObject(FiniteModel):
    """One object to segment: a box and/or positive points, optionally negative points."""

    box: tuple[float, float, float, float] | None = Field(
        None, description="[x0, y0, x1, y1] in image pixels (origin top-left, y down); clipped to the image")
    points: list[Point] = Field(default_factory=list, max_length=64, description="[[x, y], ...] on the object")
    negative: list[Point] = Field(default_factory=list, max_length=64, description="[[x, y], ...] not on it")


class SegmentPrompts(FiniteModel):
    """The ``prompts`` JSON of ``POST /v1/segment``: ``objects`` (one mask each, at most 255) or ``auto``."""

    objects: list[SegmentObject] = Field(default_factory=list, description="one mask per object, ids in this order")
    auto: bool = Field(False, description="find the objects over a grid of points instead of prompts")
    points_per_side: int = Field(SegmentRequest.points_per_side, ge=4, le=64,
                                 description="auto: grid points per image side")
    min_area: float = Field(SegmentRequest.min_area, ge=0, le=1,
                            description="drop connected fragments smaller than this fraction of the image")
    fill_holes: bool = Field(SegmentRequest.fill_holes, description="fill background holes inside each mask")
    min_score: float = Field(SegmentRequest.min_score, ge=0, le=1, description="auto: least predicted IoU of a mask")
    min_stability: float = Field(SegmentRequest.min_stability, ge=0, le=1,
                                 description="auto: least stability score of a mask")


class Segment(BaseModel):
    id: int = Field(..., description="the label map's palette index (1..255)")
    score: float = Field(..., description="the model's predicted IoU of the mask")
    area: int = Field(..., description="pixels")
    box: list[int] = Field(..., description="[x0, y0, x1, y1], inclusive-exclusive pixel bounds of the mask")
    colour: list[int] = Field(..., description="[r, g, b] of the id in the PNG palette")
    prompt: int | None = Field(..., description="index into objects (null in auto mode)")


class DroppedSegment(BaseModel):
    prompt: int | None
    reason: str


class Segments(BaseModel):
    """``segments.json`` of a finished segment job (``labels.png`` holds the ids)."""

    image_size: list[int] = Field(..., description="[width, height]")
    mode: Literal["prompts", "auto"]
    model: str
    segments: list[Segment]
    dropped: list[DroppedSegment]


class SegmentHealth(BaseModel):
    available: bool = Field(..., description="the [segment] extra is installed")
    model: str
    loaded: bool


class ErrorBody(BaseModel):
    code: str
    message: str
    hint: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class JobCreated(BaseModel):
    job_id: str
    state: str
    parent: str | None = None


class JobStatus(BaseModel):
    job_id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    parent: str | None
    created: float
    started: float | None
    finished: float | None
    stage: str | None
    step: int | None
    total: int | None
    progress: float
    eta_s: float | None
    queue_position: int | None
    error: ErrorBody | None
    params: dict


class JobList(BaseModel):
    jobs: list[JobStatus]


class StorageHealth(BaseModel):
    """Whether the job store can write (a full or read-only disk), and why not."""

    writable: bool
    error: ErrorBody | None = None


class Health(BaseModel):
    service: Literal["iscene"]
    api: str
    version: str
    state: Literal["loading", "ready", "error"]
    message: str
    error: ErrorBody | None
    model: str
    models: dict | None
    device: str
    dtype: str
    queue_length: int
    running: str | None
    vram: dict | None
    segment: SegmentHealth | None = None
    storage: StorageHealth | None = None
