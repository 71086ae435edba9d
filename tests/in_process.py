"""Helpers for tests that drive a :class:`JobService` in this process (no HTTP)."""

from __future__ import annotations

import time

from iscene_server.jobs.service import JobService

FINAL = ("succeeded", "failed", "cancelled")


def wait_until_final(svc: JobService, job_id: str, timeout: float = 300) -> dict:
    """The job's status once it has ended; a deadline on the wait, not an assertion on how long anything took."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = svc.status(job_id)
        if status["state"] in FINAL:
            return status
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} stuck in {svc.status(job_id)['state']}")
