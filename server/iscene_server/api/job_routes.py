"""``/v1/jobs``: submit a scene, poll, cancel, read the manifest, and the child jobs (regenerate, refine)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from ..jobs import intake
from ..jobs.json_fields import parse_json_field
from ..jobs.service import JobService
from .decoding import DecodeGate
from .routing import JOB_ID, created
from .schemas import (
    BuildBody,
    GenerationParams,
    JobCreated,
    JobList,
    JobStatus,
    RefineBody,
    RegenerateBody,
    VariantsBody,
)

PARAMS_EXAMPLE = '{"seed": 7, "detail": "high"}'


def jobs_router(service: JobService, gate: DecodeGate, max_pixels: int) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def validated_generate(params: str, image: UploadFile, labels: UploadFile) -> tuple[dict, dict[str, bytes]]:
        """The params and uploads of a generate job, checked as the job will read them (decoded within the gate)."""
        parsed = parse_json_field(params, GenerationParams, "params", PARAMS_EXAMPLE).model_dump()
        inputs = {"image": image.file.read(), "labels": labels.file.read()}
        with gate.admit(intake.upload_pixels(inputs.values())):
            intake.check_generate(parsed, inputs, max_pixels)
        return parsed, inputs

    @router.get("/jobs", response_model=JobList, summary="all jobs, newest first")
    def list_jobs():
        return {"jobs": service.statuses()}

    @router.post("/jobs", status_code=202, response_model=JobCreated, summary="generate a scene")
    def create_job(image: Annotated[UploadFile, File(description="the scene image (PNG, JPEG, ...)")],
                   labels: Annotated[UploadFile, File(description="the instance label map, same framing")],
                   params: Annotated[str, Form(description="GenerationParams as JSON")] = "{}"):
        parsed, inputs = validated_generate(params, image, labels)
        return created(service.submit("generate", parsed, inputs))

    @router.get("/jobs/{job_id}", response_model=JobStatus, summary="state, stage, progress, ETA, error")
    def get_job(job_id: str = JOB_ID):
        return service.status(job_id)

    @router.delete("/jobs/{job_id}", response_model=JobStatus, summary="cancel a queued or running job")
    def cancel_job(job_id: str = JOB_ID):
        return service.cancel(job_id)

    @router.get("/jobs/{job_id}/scene",
                summary="the scene manifest (while the job runs: the partial one, once its layout is ready)")
    def get_scene(job_id: str = JOB_ID) -> dict:
        return service.scene(job_id)

    @router.post("/jobs/{job_id}/regenerate", status_code=202, response_model=JobCreated,
                 summary="re-sample some instances with new seeds (a child job)")
    def regenerate(body: RegenerateBody, job_id: str = JOB_ID):
        return created(service.submit_regenerate(job_id, body.labels, body.seeds))

    @router.post("/jobs/{job_id}/build", status_code=202, response_model=JobCreated,
                 summary="make the meshes of a layout job, without running stage 1 again (a child job)")
    def build(body: BuildBody | None = None, job_id: str = JOB_ID):
        return created(service.submit_build(job_id))

    @router.post("/jobs/{job_id}/refine", status_code=202, response_model=JobCreated,
                 summary="re-generate the scene coherently with edited transforms, around context meshes (a child job)")
    def refine(body: RefineBody, job_id: str = JOB_ID):
        return created(service.submit_refine(job_id, body.transforms, body.locked, body.strength, body.seed,
                                             [entry.model_dump() for entry in body.context]))

    @router.post("/jobs/{job_id}/variants", status_code=202, response_model=JobCreated,
                 summary="K candidate shapes of one instance, made together (a child job)")
    def variants(body: VariantsBody, job_id: str = JOB_ID):
        return created(service.submit_variants(job_id, body.label, body.count, body.seeds))

    return router
