"""Request and response bodies of the ``/v1`` API (they are also the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..engine.pipeline import DEFAULT_TEXTURE_SIZE, MAX_TEXTURE_SIZE, MIN_TEXTURE_SIZE
from ..engine.refine.context import (
    CONTEXT_REACH,
    MAX_CONTEXT_FACES,
    MAX_CONTEXT_GLB_MB,
    MAX_CONTEXT_NAME,
    MAX_CONTEXT_OBJECTS,
    MAX_CONTEXT_VOXELS,
)
from ..engine.seeds import DEFAULT_SEED, SEED_LIMIT
from ..engine.variants import MAX_VARIANTS

Label = int


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationParams(StrictModel):
    """The ``params`` JSON of ``POST /v1/jobs``; every field is optional."""

    seed: int = Field(DEFAULT_SEED, ge=0, lt=SEED_LIMIT,
                      description="scene seed (also each object's, unless regenerated)")
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
    texture: Literal["baked", "vertex"] = Field("baked", description="a baked base-colour texture (UV atlas, PNG "
                                                "in the GLB), or vertex colours only")
    vertex_colors: bool | None = Field(None, description="COLOR_0 in the GLBs (default: only with texture vertex; "
                                       "next to a texture, glTF viewers multiply the two and show it darker)")
    texture_size: int = Field(DEFAULT_TEXTURE_SIZE, ge=MIN_TEXTURE_SIZE, le=MAX_TEXTURE_SIZE,
                              description="texels per side of the baked texture")
    until: Literal["meshes", "layout"] = Field("meshes", description="the last result: meshes, or only the layout "
                                               "(stage 1: proxies and camera; POST /v1/jobs/{id}/build adds meshes)")
    name: str | None = Field(None, max_length=200, description="what job lists call the scene, e.g. the image's "
                             "file name (not used by the model)")

    @model_validator(mode="after")
    def _some_colour(self):
        if self.texture == "vertex" and self.vertex_colors is False:
            raise ValueError('texture "vertex" with vertex_colors false leaves the objects without colour: leave '
                             'vertex_colors unset (or true), or use texture "baked"')
        return self


class RegenerateBody(StrictModel):
    labels: list[Label] = Field(..., min_length=1, max_length=100, description="instances to re-sample")
    seeds: dict[Label, int] | None = Field(None, description="seed per label (default: new random seeds)")

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, seeds):
        if seeds and any(not 0 <= s < SEED_LIMIT for s in seeds.values()):
            raise ValueError(f"seeds must be in [0, {SEED_LIMIT})")
        return seeds


class VariantsBody(StrictModel):
    label: Label = Field(..., description="the instance to make candidates of")
    count: int = Field(..., description=f"how many candidates, 1 to {MAX_VARIANTS} (made together in one pass)")
    seeds: list[int] | None = Field(None, description=f"one distinct seed per candidate, in [0, {SEED_LIMIT}) "
                                                      "(default: random ones)")


class FiniteModel(StrictModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Matrix = list[list[float]]
MAX_TRANSLATION = 10.0  # scene units; the scene volume is the cube [-0.5, 0.5]^3


class BuildBody(StrictModel):
    """``POST /v1/jobs/{id}/build`` takes no options: the layout job's parameters and seeds are used."""


class ContextEntry(StrictModel):
    """One of the artist's own meshes, kept fixed: the refined objects are arranged around it, it is never changed
    or exported. Its values are checked by the server (refused with a message naming it), so non-finite ones pass
    the schema."""

    name: str = Field(..., min_length=1, max_length=MAX_CONTEXT_NAME, description="unique within the list")
    transform: Matrix = Field(..., description="4x4 matrix (rows, column vectors, last row 0 0 0 1) from the GLB's "
                                               "frame (glTF y-up undone: (x, y, z) -> (x, -z, y)) to the scene frame")
    glb: str = Field(..., description=f"standard base64 of a binary glTF 2.0 file of at most {MAX_CONTEXT_GLB_MB} MiB "
                                      f"and {MAX_CONTEXT_FACES:,} triangles (no Draco or meshopt compression); its "
                                      f"transformed bounds within [-{CONTEXT_REACH:g}, {CONTEXT_REACH:g}]^3, some of "
                                      f"it in the scene volume [-0.5, 0.5]^3, filling at most {MAX_CONTEXT_VOXELS:,} "
                                      "of its 64^3 cells")


class RefineBody(FiniteModel):
    transforms: dict[Label, Matrix] = Field(default_factory=dict, max_length=100,
                                            description="4x4 matrix per label in the scene frame (column vectors); "
                                                        f"finite, translations within ±{MAX_TRANSLATION:g}")
    locked: list[Label] = Field(default_factory=list, max_length=100, description="instances kept exactly")
    strength: float = Field(0.5, ge=0, le=1, description="0 keeps the moved shapes, 1 re-generates from noise")
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="noise seed (default: random)")
    context: list[ContextEntry] = Field(default_factory=list, max_length=MAX_CONTEXT_OBJECTS,
                                        description=f"at most {MAX_CONTEXT_OBJECTS} fixed meshes of the artist's scene "
                                                    "(rendered into the edited view, kept as locked occupancy in "
                                                    "stage 1, never exported); recorded in the manifest's context")

    @field_validator("transforms")
    @classmethod
    def _bounded_translation(cls, transforms):
        for label, matrix in transforms.items():
            translation = [row[3] for row in matrix[:3] if len(row) == 4]  # other shapes: refused by the engine
            if any(abs(t) > MAX_TRANSLATION for t in translation):
                raise ValueError(f"the translation of instance {label} ({translation}) is beyond ±{MAX_TRANSLATION:g} "
                                 "scene units: the scene volume is the cube [-0.5, 0.5]^3")
        return transforms


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
    stage: str | None = Field(..., description="the running job's stage, or where a failed or cancelled job stopped")
    step: int | None = Field(..., description="steps of that stage done")
    total: int | None = Field(..., description="steps of that stage")
    progress: float
    eta_s: float | None
    queue_position: int | None
    error: ErrorBody | None
    params: dict
    layout_ready: bool = Field(False, description="the layout (partial manifest, proxies, camera) is served")
    ready_labels: list[int] = Field(default_factory=list,
                                    description="labels whose final files this job made are downloadable")
    ready_variants: list[int] = Field(default_factory=list,
                                      description="variants jobs: candidate indices whose files are downloadable")
    events: list[dict] = Field(default_factory=list,
                               description="what the job published, in order: {seq, event (layout | instance | "
                                           "variant), label (instance, variant), index (variant), t (seconds since "
                                           "it started)}")


class JobList(BaseModel):
    jobs: list[JobStatus]


class StorageHealth(BaseModel):
    """Whether the job store can write (a full or read-only disk), and why not."""

    writable: bool
    error: ErrorBody | None = None


class WorkerHealth(BaseModel):
    """One worker: its device, its model's state, and the job it runs."""

    name: str = Field(..., description="local-0, local-1, ... (--devices); ray-0, ... (--ray)")
    device: str
    dtype: str
    state: Literal["loading", "ready", "error"]
    message: str
    error: ErrorBody | None
    vram: dict | None
    models: dict | None
    segment_loaded: bool
    job: str | None = Field(..., description="the job it runs, None when idle")


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
    running: str | None = Field(..., description="a running job (the first worker's); see running_jobs")
    running_jobs: list[str] = Field(default_factory=list, description="every running job, one per busy worker")
    workers: list[WorkerHealth] = Field(default_factory=list)
    vram: dict | None
    segment: SegmentHealth | None = None
    storage: StorageHealth | None = None
