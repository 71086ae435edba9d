"""Starting a job: the one sequence every operator that sends work to the server goes through."""

from __future__ import annotations

from .history import save
from .job_requests import Request
from .jobs import Job
from .preferences import client, preferences, user_dir
from .pump import RUNTIME, ensure_timer


def start_job(context, request: Request) -> Job:
    """Record ``request`` as a job in the scene's history and hand it to a worker thread; returns at once."""
    job = Job(request.kind, request.title, context.scene.name, user_dir("jobs"), request.params, request.inputs,
              request.parent, request.root, request.targets, request.image, request.names)
    job.folder = user_dir("jobs", job.key)
    save(context.scene, job)
    RUNTIME.start(job, client(context), preferences(context).poll_interval)
    ensure_timer()
    return job
