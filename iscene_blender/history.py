"""The job history, stored in the .blend (``scene.iscene.history``) and merged with the server's
``GET /v1/jobs``: every job the artist ran, or that the server still has, with a title that says what it was.
Main thread only."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from . import wording
from .jobs import ACTIVE, Job


def find(scene, key: str):
    return next((r for r in scene.iscene.history if r.key == key or (key and r.server_id == key)), None)


def save(scene, job: Job) -> None:
    """Create or update the record of a job the add-on runs."""
    record = next((r for r in scene.iscene.history if r.key == job.key), None)
    if record is None:
        record = scene.iscene.history.add()
        record.key, record.created = job.key, job.created
    record.kind, record.title, record.state = job.kind, job.title, job.state
    record.server_id, record.parent = job.server_id or "", job.parent or ""
    record.message, record.hint, record.folder = job.message, job.hint, str(job.folder)
    record.root, record.image = job.root or "", job.image or ""
    record.name = job.params.get("name") or record.name
    record.finished = job.finished or 0.0


def server_title(status: dict) -> str:
    """A title for a job only the server knows about (its parameters say what it was)."""
    params = status.get("params") or {}
    kind = status.get("kind", "job")
    objects = len(params["labels"]) if kind == "regenerate" and params.get("labels") else None
    seed = params.get("seed") if kind != "regenerate" else None
    return wording.job_title(kind, scene_name(status), objects, seed, status.get("created"))


def scene_name(status: dict) -> str:
    """The name the add-on gave the scene (the image's), kept in the job's parameters or its parent's."""
    params = status.get("params") or {}
    return params.get("name") or (params.get("parent_params") or {}).get("name") or ""


def merge(scene, server_jobs: list[dict]) -> int:
    """Add the server's jobs the history lacks and take the server's state for those that are not running
    here; returns how many were added. Removed (hidden) records stay hidden."""
    added = 0
    for status in server_jobs:
        record = find(scene, status["job_id"])
        if record is None:
            record = scene.iscene.history.add()
            record.key = record.server_id = status["job_id"]
            record.kind, record.title = status.get("kind", "generate"), server_title(status)
            record.name = scene_name(status)
            record.created, record.parent = status.get("created") or time.time(), status.get("parent") or ""
            added += 1
        elif record.state in ACTIVE and record.key != record.server_id:
            continue  # the worker of this session follows it
        record.state = status["state"]
        record.finished = status.get("finished") or 0.0
        error = status.get("error") or {}
        if error:
            record.message, record.hint = error.get("message", ""), error.get("hint", "")
    return added


def visible(scene) -> list:
    """The records to list, newest first. ``created`` is a single-precision float (Blender has no double
    property): today's times fall on a 128 s grid, so records of the same stretch are ordered by when they were
    added, the last added first."""
    records = [(r.created, i, r) for i, r in enumerate(scene.iscene.history) if not r.hidden]
    return [r for _, _, r in sorted(records, key=lambda item: item[:2], reverse=True)]


def remove(record, in_use: set[Path]) -> None:
    """Hide the record (the server's list will not bring it back) and delete its downloads unless in use."""
    record.hidden = True
    if record.folder and Path(record.folder).resolve() not in in_use:
        shutil.rmtree(record.folder, ignore_errors=True)
