"""``/v1/segment``: SAM segmentation jobs and their ``segments.json``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from ..jobs import intake
from ..jobs.json_fields import parse_json_field
from ..jobs.service import JobService
from ..segment.prompts import SegmentPrompts
from .decoding import DecodeGate
from .routing import JOB_ID, created
from .schemas import ErrorResponse, JobCreated, Segments

PROMPTS_EXAMPLE = '{"objects": [{"box": [40, 60, 200, 220]}, {"points": [[320, 140]]}]} or {"auto": true}'


def segment_router(service: JobService, gate: DecodeGate, max_pixels: int) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def validated_segment(prompts: str, image: UploadFile) -> tuple[dict, bytes]:
        """The prompts and image of a segment job, checked against each other (the image decoded within the
        gate); 501 first when segmentation is not installed."""
        service.require_segmentation()
        parsed = parse_json_field(prompts, SegmentPrompts, "prompts", PROMPTS_EXAMPLE).model_dump()
        data = image.file.read()
        with gate.admit(intake.upload_pixels([data])):
            intake.check_segment(parsed, data, max_pixels)
        return parsed, data

    @router.post("/segment", status_code=202, response_model=JobCreated,
                 responses={501: {"model": ErrorResponse, "description": "the [segment] extra is not installed"}},
                 summary="segment objects with SAM: one mask per box/point prompt, or automatic (a job)")
    def create_segment_job(image: Annotated[UploadFile, File(description="the image (PNG, JPEG, ...)")],
                           prompts: Annotated[str, Form(description="SegmentPrompts as JSON (image pixels, origin "
                                                                    "top-left, y down)")]):
        parsed, data = validated_segment(prompts, image)
        return created(service.submit("segment", parsed, {"image": data}))

    @router.get("/jobs/{job_id}/segments", response_model=Segments,
                summary="segments.json of a finished segment job (the ids of files/labels.png)")
    def get_segments(job_id: str = JOB_ID) -> dict:
        return service.segments(job_id)

    return router
