"""Every job in its own folder under ``<data dir>/jobs/<id>/``: ``job.json`` (the record), ``inputs/`` (the
uploaded image and label map — a segment job has only the image, a refine may add its context objects —, stored
under fixed names), and the files the job produced.

Records are rewritten atomically, so a crash never leaves a half-written ``job.json``. After a restart,
finished jobs are listed and downloadable as before, queued jobs are queued again, and jobs that were running
are marked failed. Every record read is validated: a damaged one is skipped with one log line and its folder
left alone.

When the disk cannot take a write (full, read-only), the change is kept in memory, the record remembered as
unsaved and the problem kept in :attr:`JobStore.problem`; the next write that succeeds (any job's, or the probe
of :meth:`JobStore.check_writable`) saves the unsaved records and clears the problem.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import DATA_DIR_SETTING, storage_error, write_atomic
from ..errors import NotFoundError, StorageError
from .publishing import valid_events

log = logging.getLogger("iscene.jobs")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
STATES = (QUEUED, RUNNING, *FINISHED)
KINDS = ("generate", "regenerate", "refine", "build", "variants", "segment")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
SCENE_INPUTS = ("image", "labels")  # what a scene is made from: every child job of a scene gets them
INPUT_NAMES = (*SCENE_INPUTS, "context")  # context: a refine's own context objects (engine/refine/context.py)
RECORD = "job.json"
PROBE = ".write-probe"
PROBE_INTERVAL_S = 1.0  # at most one probe write a second while the disk cannot be written


@dataclass
class JobRecord:
    id: str
    kind: str  # one of KINDS
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    parent: str | None = None
    params: dict = field(default_factory=dict)
    error: dict | None = None
    stopped_at: dict | None = None  # {stage, step, total}: the last progress of a job that failed or was cancelled
    events: list[dict] = field(default_factory=list)  # what it published while running (jobs/publishing.py)

    @property
    def done(self) -> bool:
        return self.state in FINISHED


class DamagedRecord(ValueError):
    """A ``job.json`` that is not a record this server wrote."""


def _is_time(value, optional: bool) -> bool:
    return (value is None and optional) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _is_error(value) -> bool:
    return value is None or (isinstance(value, dict) and all(isinstance(value.get(key), str)
                                                             for key in ("code", "message", "hint")))


def _is_progress(value) -> bool:
    return value is None or (isinstance(value, dict) and isinstance(value.get("stage"), str) and
                             all(type(value.get(key)) is int for key in ("step", "total")))


def validate_record(data, folder_name: str) -> JobRecord:
    """The record in ``data`` (parsed ``job.json``) of job folder ``folder_name``, else :class:`DamagedRecord`."""
    if not isinstance(data, dict):
        raise DamagedRecord("not a JSON object")
    unknown = set(data) - set(JobRecord.__dataclass_fields__)
    if unknown:
        raise DamagedRecord(f"unknown fields {sorted(unknown)}")
    parent = data.get("parent")
    checks = {
        "id": data.get("id") == folder_name and JOB_ID.match(folder_name) is not None,
        "kind": data.get("kind") in KINDS,
        "state": data.get("state", QUEUED) in STATES,
        "created": _is_time(data.get("created"), optional=False),
        "started": _is_time(data.get("started"), optional=True),
        "finished": _is_time(data.get("finished"), optional=True),
        "parent": parent is None or (isinstance(parent, str) and JOB_ID.match(parent) is not None),
        "params": isinstance(data.get("params", {}), dict),
        "error": _is_error(data.get("error")),
        "stopped_at": _is_progress(data.get("stopped_at")),
        "events": valid_events(data.get("events", [])),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise DamagedRecord(f"invalid {', '.join(bad)}")
    return JobRecord(**data)


class JobStore:
    def __init__(self, data_dir: str | Path, setting: str = DATA_DIR_SETTING):
        """``setting``: how users name ``data_dir`` (the server's option), for messages that name no path."""
        self.root = Path(data_dir) / "jobs"
        self.setting = setting
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, setting) or exc from None
        self._lock = threading.RLock()
        self._records: dict[str, JobRecord] = {}
        self._unsaved: set[str] = set()
        self.problem: StorageError | None = None  # why the latest write failed; None once writes succeed again
        self._probed = 0.0
        for folder in self.root.iterdir():
            record = self._read(folder)
            if record is not None:
                self._records[record.id] = record

    @staticmethod
    def _read(folder: Path) -> JobRecord | None:
        path = folder / RECORD
        if not folder.is_dir() or not path.is_file():
            return None  # not a job folder: leave it alone
        try:
            return validate_record(json.loads(path.read_text()), folder.name)
        except (OSError, ValueError) as exc:  # DamagedRecord and JSONDecodeError are ValueErrors
            log.warning("skipped the damaged job record %s/%s (%s)", folder.name, RECORD, exc)
            return None

    def folder(self, job_id: str) -> Path:
        """The folder of a known job. Ids are validated, so no request can name a path outside the store."""
        self.get(job_id)
        return self.root / job_id

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            record = self._records.get(job_id) if JOB_ID.match(job_id or "") else None
        if record is None:
            raise NotFoundError(f"there is no job {job_id!r}",
                                "list the jobs with GET /v1/jobs; finished jobs are pruned after a while")
        return record

    def list(self) -> list[JobRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: r.created, reverse=True)

    def create(self, kind: str, params: dict, inputs: dict[str, bytes], parent: str | None = None) -> JobRecord:
        """A new queued job with its inputs on disk; when the disk cannot take them, :class:`StorageError` and
        nothing left behind."""
        record = JobRecord(id=uuid.uuid4().hex, kind=kind, params=params, parent=parent)
        folder = self.root / record.id
        try:
            try:
                (folder / "inputs").mkdir(parents=True)
            except OSError as exc:
                raise storage_error(exc, self.setting) or exc from None
            for name in INPUT_NAMES:
                if name in inputs:
                    write_atomic(folder / "inputs" / name, inputs[name], self.setting)
            with self._lock:
                self._save(record)
                self._records[record.id] = record
        except (OSError, StorageError):
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return record

    def input_bytes(self, job_id: str) -> dict[str, bytes]:
        folder = self.folder(job_id) / "inputs"
        return {name: (folder / name).read_bytes() for name in INPUT_NAMES if (folder / name).is_file()}

    def scene_inputs(self, job_id: str) -> dict[str, bytes]:
        """The inputs of job ``job_id`` that its child jobs inherit: the image and label map (a refine's context
        objects are its own)."""
        return {name: data for name, data in self.input_bytes(job_id).items() if name in SCENE_INPUTS}

    def update(self, job_id: str, **changes) -> JobRecord:
        """Apply ``changes`` and save the record. When the disk cannot take it the change still holds in memory
        (the next write that succeeds saves it) and :class:`StorageError` is raised."""
        with self._lock:
            record = self.get(job_id)
            for key, value in changes.items():
                setattr(record, key, value)
            self._save(record)
            return record

    def _save(self, record: JobRecord) -> None:
        """Write ``record`` (or raise :class:`StorageError`); after a success, the records left unsaved too."""
        with self._lock:
            self._write_or_remember(record)
            self._save_unsaved()

    def _save_unsaved(self) -> None:
        """Save the records an earlier failure left unsaved; the problem is gone once they all are."""
        for job_id in sorted(self._unsaved):
            pending = self._records.get(job_id)
            if pending is None or not (self.root / job_id).is_dir():  # deleted meanwhile
                self._unsaved.discard(job_id)
                continue
            try:
                self._write_or_remember(pending)
            except StorageError:
                return
        self.problem = None

    def _write_or_remember(self, record: JobRecord) -> None:
        try:
            write_atomic(self.root / record.id / RECORD, json.dumps(asdict(record), indent=2).encode(), self.setting)
        except StorageError as exc:
            self._unsaved.add(record.id)
            if self.problem is None or self.problem.code != exc.code:
                log.error("cannot save job records: %s", exc.message)
            self.problem = exc
            raise
        self._unsaved.discard(record.id)

    def check_writable(self, force: bool = False) -> StorageError | None:
        """The current disk problem, or None. While there is one (or with ``force``), a probe write — at most
        one a second unless ``force`` — finds out whether it is gone, and then saves the unsaved records."""
        with self._lock:
            if self.problem is None and not force:
                return None
            if not force and time.monotonic() - self._probed < PROBE_INTERVAL_S:
                return self.problem
            self._probed = time.monotonic()
            try:
                write_atomic(self.root / PROBE, b"ok", self.setting)
                (self.root / PROBE).unlink(missing_ok=True)
            except StorageError as exc:
                if self.problem is None:
                    log.error("cannot write in the data folder: %s", exc.message)
                self.problem = exc
                return exc
            self._save_unsaved()
            return self.problem

    def recover(self) -> list[JobRecord]:
        """After a restart: fail the jobs that were running; return the queued ones (oldest first). A disk that
        cannot take the failed records does not stop this (they are failed in memory, :attr:`problem` says why)."""
        for record in self.list():
            if record.state == RUNNING:
                with contextlib.suppress(StorageError):  # saved once the disk takes writes again
                    self.update(record.id, state=FAILED, finished=time.time(), error={
                        "code": "server_restarted", "message": "the server restarted while this job was running",
                        "hint": "submit the job again (Retry)"})
        return sorted((r for r in self.list() if r.state == QUEUED), key=lambda r: r.created)

    def size(self, job_id: str) -> int:
        total = 0
        for path in (self.root / job_id).rglob("*"):
            with contextlib.suppress(OSError):  # removed while counting
                total += path.stat().st_size if path.is_file() else 0
        return total

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._records.pop(job_id, None)
            self._unsaved.discard(job_id)
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def prune(self, max_age_s: float | None, max_bytes: int | None, now: float | None = None) -> list[str]:
        """Delete finished jobs older than ``max_age_s``, then the oldest finished ones while the store is
        larger than ``max_bytes``. Queued and running jobs are never touched, nor the parent of a job that is
        not finished (a regenerate or refine child reads its parent's files when it runs)."""
        now = time.time() if now is None else now
        records = self.list()
        needed = {r.parent for r in records if r.parent and not r.done}
        finished = sorted((r for r in records if r.done and r.id not in needed),
                          key=lambda r: r.finished or r.created)
        removed = [r.id for r in finished if max_age_s is not None and now - (r.finished or r.created) > max_age_s]
        for job_id in removed:
            self.delete(job_id)
        if max_bytes is not None:
            remaining = [r for r in finished if r.id not in removed]
            sizes = {r.id: self.size(r.id) for r in self.list()}
            total = sum(sizes.values())
            for record in remaining:
                if total <= max_bytes:
                    break
                total -= sizes.get(record.id, 0)
                self.delete(record.id)
                removed.append(record.id)
        return removed
