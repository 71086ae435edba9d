"""The Ray actor that runs jobs on a cluster node: a plain class here, made a Ray actor by :mod:`.remote` (so that
importing the server never needs Ray).

One actor loads its models once (a :class:`.local.LocalWorker` on its node) and runs one job at a time with it,
in a temporary folder on its node (a child job's parent files are written there first). It is threaded
(``max_concurrency``): while :meth:`JobActor.run` works, the head calls :meth:`JobActor.poll` for the latest
progress and the results published since, each with the files that are new or changed since the last poll, and
:meth:`JobActor.cancel` to stop the job. Files and errors travel as plain values (bytes, dicts), never as
exceptions, so the head rebuilds exactly the error the job raised."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
from pathlib import Path

import torch

from ... import __version__
from ...atomic import write_atomic
from ...engine.progress import ProgressUpdate
from ...errors import Cancelled, ISceneError
from .base import JobRun
from .execute import unexpected_error
from .local import LocalWorker
from .models import ModelSettings

log = logging.getLogger("iscene.jobs")

WORKER_DISK = "the Ray worker's temporary folder"  # what a disk error on the actor's node names


class FolderWatch:
    """The files of one folder (recursively, by relative path) that are new or changed since the last call."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._seen: dict[str, tuple[int, int]] = {}

    def changed(self) -> dict[str, bytes]:
        found = {}
        for path in sorted(self.folder.rglob("*")):
            if not path.is_file() or path.name.endswith(".partial"):  # a file being written is no result yet
                continue
            name, stat = path.relative_to(self.folder).as_posix(), path.stat()
            signature = (stat.st_mtime_ns, stat.st_size)
            if self._seen.get(name) != signature:
                found[name] = path.read_bytes()
                self._seen[name] = signature
        return found


def write_tree(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative path -> bytes) under ``folder``, each atomically (readers never see a part)."""
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, content)


class RecordingPublisher:
    """Stands in for the head's :class:`~..publishing.Publisher` on the actor: each event is kept, with the files
    that are new or changed in the job's folder (the files it announces), until the head polls."""

    def __init__(self, watch: FolderWatch, lock: threading.Lock, pending: list[dict]):
        self.watch, self.lock, self.pending = watch, lock, pending

    def event(self, name: str, **fields) -> dict:
        entry = {"name": name, "fields": fields, "files": self.watch.changed()}
        with self.lock:
            self.pending.append(entry)
        return entry


@dataclasses.dataclass
class ActorJob:
    """What the actor keeps of the job it runs, for :meth:`JobActor.poll` and :meth:`JobActor.cancel`."""
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    latest: ProgressUpdate | None = None
    events: list[dict] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class JobActor:
    """Loads the models once (a :class:`.local.LocalWorker` on this node, in the background), then runs the jobs
    the head's :class:`.remote.RayWorker` sends."""

    def __init__(self, settings: ModelSettings):
        self.worker = LocalWorker("actor", settings)
        self.worker.start()
        self._jobs: dict[str, ActorJob] = {}

    def status(self) -> dict:
        """Everything the head reports about this worker (:meth:`.base.Worker.describe`), with its iscene-server
        version, cost keys, default steps and the torch threads it computes with."""
        worker = self.worker
        return {**worker.describe(), "version": __version__, "default_steps": list(worker.default_steps()),
                "cost_keys": {"scene": worker.cost_key(True), "segment": worker.cost_key(False)},
                "torch_threads": torch.get_num_threads()}

    def run(self, job_id: str, kind: str, params: dict, inputs: dict[str, bytes],
            parent_files: dict[str, bytes] | None, plan: dict[str, float], time_limit_s: float | None) -> dict:
        """Run one job to its end: ``{"stage_seconds", "update" (the last progress), "events" and "files" (those
        not polled yet), "error" (None or {code, message, hint}), "cancelled"}``."""
        state = self._jobs[job_id] = ActorJob()
        try:
            with tempfile.TemporaryDirectory(prefix=f"iscene-{job_id}-") as temp:
                folder, parent = Path(temp) / "job", None
                folder.mkdir()
                if parent_files is not None:
                    parent = Path(temp) / "parent"
                    write_tree(parent, parent_files)
                watch = FolderWatch(folder)
                job = JobRun(job_id, kind, params, inputs, folder, parent, plan,
                             lambda update: setattr(state, "latest", update), state.cancel,
                             RecordingPublisher(watch, state.lock, state.events), time_limit_s)
                outcome = {"error": None, "cancelled": False}
                try:
                    self.worker.run(job)
                except Cancelled:
                    outcome["cancelled"] = True
                except ISceneError as exc:
                    outcome["error"] = exc.to_dict()
                except Exception as exc:  # a bug: logged on this node, the head gets the clear error
                    outcome["error"] = unexpected_error(exc, WORKER_DISK)
                return {**outcome, "stage_seconds": job.stage_seconds, **self._news(state), "files": watch.changed()}
        finally:
            self._jobs.pop(job_id, None)

    def poll(self, job_id: str) -> dict:
        """The job's latest progress (a dict, or None) and the events published since the last poll."""
        state = self._jobs.get(job_id)
        return self._news(state) if state is not None else {"update": None, "events": []}

    @staticmethod
    def _news(state: ActorJob) -> dict:
        """The job's latest progress (a dict, or None) and its events not handed out yet."""
        with state.lock:
            events, state.events[:] = list(state.events), []
        latest = state.latest
        return {"update": dataclasses.asdict(latest) if latest else None, "events": events}

    def cancel(self, job_id: str) -> None:
        state = self._jobs.get(job_id)
        if state is not None:
            state.cancel.set()

    def close(self) -> None:
        self.worker.close()
