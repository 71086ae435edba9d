"""A worker runs the jobs the service hands it, one at a time, on its own models; the service keeps the queue,
the job store, the progress the clients read and the cost model.

The service makes one :class:`JobRun` per job a worker takes and calls :meth:`Worker.run` on that worker's own
thread. Whatever kind of worker it is, the job's result files land in ``JobRun.folder`` (the head's job store),
each published result's files before its ``publisher.event``, and its progress reaches ``JobRun.on_update``.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...engine.progress import ProgressUpdate


@dataclass
class JobRun:
    """One job handed to a worker: what to run, where its files go, and how it reports back."""
    job_id: str
    kind: str
    params: dict
    inputs: dict[str, bytes]
    folder: Path  # the job's folder in the head's store: its results land here
    parent_folder: Path | None  # a child job's parent's folder (read only)
    plan: dict[str, float]  # predicted seconds per stage: the ETA's prior (ProgressTracker(predicted=True))
    on_update: Callable[[ProgressUpdate], None]
    cancel: threading.Event  # set: the job stops within about a second (Cancelled)
    publisher: object  # has .event(name, **fields), called after the announced files are in ``folder``
    time_limit_s: float | None
    clock: Callable[[], float] = time.monotonic  # what the time limit is measured on (tests pass a fake one)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # filled by the worker, even when the job fails


class Worker(ABC):
    """One slot that runs one job at a time. ``name`` is unique within the service (``"local-0"``, ``"ray-1"``)."""

    name: str

    @abstractmethod
    def start(self) -> None:
        """Begin loading the models (in the background: this returns at once)."""

    @abstractmethod
    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until loading ended, well or not (True), or ``timeout`` passed (False)."""

    @abstractmethod
    def model_status(self) -> dict:
        """``{"state": "loading" | "ready" | "error", "message": str, "error": dict | None}`` of the I-Scene model."""

    @abstractmethod
    def describe(self) -> dict:
        """What ``/v1/health`` lists for this worker (besides the job it runs, which the service adds):
        ``name``, ``device``, ``dtype``, ``state``, ``message``, ``error``, ``vram``, ``segment_loaded``, ``models``."""

    @abstractmethod
    def cost_key(self, scene: bool) -> str | None:
        """Whose costs a job runs at on this worker (:meth:`.models.WorkerModels.cost_key`); None while unknown."""

    @abstractmethod
    def default_steps(self) -> tuple[int, int]:
        """The model's stage-1 and stage-2 sampling steps (:func:`..runner.default_steps`; the released samplers'
        while it is not loaded)."""

    @abstractmethod
    def run(self, job: JobRun) -> None:
        """Run ``job`` to its end; raises :class:`~...errors.Cancelled`, the job's :class:`~...errors.ISceneError`,
        or anything else for a bug. Fills ``job.stage_seconds`` with the stages that ran to their end."""

    @abstractmethod
    def close(self) -> None:
        """Stop and let go of the models; a running job is cancelled first by the service."""
