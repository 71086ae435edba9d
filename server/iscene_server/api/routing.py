"""What the ``/v1`` routers share: the job-id path parameter and the answer to a submit."""

from __future__ import annotations

from fastapi import Path

from ..jobs.store import JobRecord

JOB_ID = Path(..., description="a job id as returned by POST /v1/jobs")


def created(record: JobRecord) -> dict:
    """The ``JobCreated`` answer for a job just queued."""
    return {"job_id": record.id, "state": record.state, "parent": record.parent}
