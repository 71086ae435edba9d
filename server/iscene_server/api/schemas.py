"""Request and response bodies of the ``/v1`` API (they are also the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Label = int


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class RegenerateBody(StrictModel):
    labels: list[Label] = Field(..., min_length=1, max_length=100, description="instances to re-sample")
    seeds: dict[Label, int] | None = Field(None, description="seed per label (default: new random seeds)")

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, seeds):
        if seeds and any(not 0 <= s < 2 ** 31 for s in seeds.values()):
            raise ValueError("seeds must be in [0, 2^31)")
        return seeds


Matrix = list[list[float]]


class RefineBody(StrictModel):
    transforms: dict[Label, Matrix] = Field(default_factory=dict,
                                            description="4x4 matrix per label in the scene frame (column vectors)")
    locked: list[Label] = Field(default_factory=list, max_length=100, description="instances kept exactly")
    strength: float = Field(0.5, ge=0, le=1, description="0 keeps the moved shapes, 1 re-generates from noise")
    seed: int | None = Field(None, ge=0, le=2 ** 31 - 1, description="noise seed (default: random)")


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
