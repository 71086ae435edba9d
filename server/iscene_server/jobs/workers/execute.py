"""What a job of each kind runs, given one worker's models: the same code in this process and on a Ray actor.

A job reads its inputs, its stored parameters and (for a child job) its parent's folder, and writes its results
into its own folder, announcing each published result through ``publisher.event`` right after its files are on
disk (:mod:`..publishing`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ...atomic import storage_error
from ...engine.progress import ProgressTracker
from ...errors import UnavailableError
from ..runner import (
    check_stored_params,
    run_build,
    run_generate,
    run_refine,
    run_regenerate,
    run_segment,
    run_variants,
)
from .models import WorkerModels

log = logging.getLogger("iscene.jobs")

# jobs that need the I-Scene model and make a scene
SCENE_KINDS = ("generate", "regenerate", "refine", "build", "variants")
# Scene jobs derived from a finished parent job: how each runs (they all take the parent's folder)
CHILD_RUNNERS = {"regenerate": run_regenerate, "refine": run_refine, "build": run_build, "variants": run_variants}
# Jobs that take seconds while an artist waits: they run before every queued scene job (FIFO among themselves),
# and need neither the I-Scene model nor its loading to have finished.
PRIORITY_KINDS = ("segment",)


def execute(models: WorkerModels, kind: str, params: dict, inputs: dict[str, bytes], folder: Path,
            parent_folder: Path | None, tracker: ProgressTracker, publisher) -> None:
    """Run one job of ``kind`` into ``folder``; raises :class:`~...errors.Cancelled`, an
    :class:`~...errors.ISceneError` (the job's error), or anything else (a bug: :func:`unexpected_error`)."""
    check_stored_params(kind, params)
    if kind in SCENE_KINDS and models.pipeline is None:
        raise UnavailableError(f"the model could not be loaded: {models.status.message}",
                               "restart the server with a working --model")
    if kind == "generate":
        run_generate(models.pipeline, folder, params, inputs, tracker, publisher=publisher)
    elif kind in CHILD_RUNNERS:
        CHILD_RUNNERS[kind](models.pipeline, folder, parent_folder, params, inputs, tracker, publisher=publisher)
    elif kind == "segment":
        run_segment(models.segmenter(), folder, params, inputs, tracker)
    else:
        raise ValueError(f"unknown job kind {kind!r}")


def unexpected_error(exc: Exception, setting: str) -> dict:
    """The error dict of a job that failed with ``exc``, not an :class:`~...errors.ISceneError`: a disk that
    could not take a result file (``setting`` names where it is configured), the GPU out of memory, else a bug
    (logged here with its traceback, which never reaches a client)."""
    problem = storage_error(exc, setting) if isinstance(exc, OSError) else None
    if problem is not None:
        return problem.to_dict()
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return {"code": "out_of_memory", "message": "the GPU ran out of memory",
                "hint": "generate fewer objects at once (select a subset of labels), lower the detail, "
                        "or free GPU memory used by other programs"}
    log.exception("job failed")
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}",
            "hint": "this is a bug or a broken installation; the server log has the details"}
