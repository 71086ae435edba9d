"""Every job in its own folder under ``<data dir>/jobs/<id>/``: ``job.json`` (the record), ``inputs/`` (the
uploaded image and label map — a segment job has only the image —, stored under fixed names), and the files the
job produced.

Records are rewritten atomically, so a crash never leaves a half-written ``job.json``. After a restart,
finished jobs are listed and downloadable as before, queued jobs are queued again, and jobs that were running
are marked failed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import NotFoundError

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
INPUT_NAMES = ("image", "labels")
RECORD = "job.json"


@dataclass
class JobRecord:
    id: str
    kind: str  # generate | regenerate | refine | segment
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    parent: str | None = None
    params: dict = field(default_factory=dict)
    error: dict | None = None

    @property
    def done(self) -> bool:
        return self.state in FINISHED


class JobStore:
    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._records: dict[str, JobRecord] = {}
        for folder in self.root.iterdir():
            record = self._read(folder)
            if record is not None:
                self._records[record.id] = record

    @staticmethod
    def _read(folder: Path) -> JobRecord | None:
        try:
            data = json.loads((folder / RECORD).read_text())
            record = JobRecord(**data)
        except (OSError, ValueError, TypeError):
            return None  # not a job folder (or a damaged one): leave it alone
        return record if record.id == folder.name and JOB_ID.match(record.id) else None

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
        record = JobRecord(id=uuid.uuid4().hex, kind=kind, params=params, parent=parent)
        folder = self.root / record.id
        (folder / "inputs").mkdir(parents=True)
        for name in INPUT_NAMES:
            if name in inputs:
                (folder / "inputs" / name).write_bytes(inputs[name])
        with self._lock:
            self._write(record)
            self._records[record.id] = record
        return record

    def input_bytes(self, job_id: str) -> dict[str, bytes]:
        folder = self.folder(job_id) / "inputs"
        return {name: (folder / name).read_bytes() for name in INPUT_NAMES if (folder / name).is_file()}

    def update(self, job_id: str, **changes) -> JobRecord:
        with self._lock:
            record = self.get(job_id)
            for key, value in changes.items():
                setattr(record, key, value)
            self._write(record)
            return record

    def _write(self, record: JobRecord) -> None:
        folder = self.root / record.id
        partial = folder / (RECORD + ".partial")
        partial.write_text(json.dumps(asdict(record), indent=2))
        os.replace(partial, folder / RECORD)

    def recover(self) -> list[JobRecord]:
        """After a restart: fail the jobs that were running; return the queued ones (oldest first)."""
        for record in self.list():
            if record.state == RUNNING:
                self.update(record.id, state=FAILED, finished=time.time(), error={
                    "code": "server_restarted", "message": "the server restarted while this job was running",
                    "hint": "submit the job again (Retry)"})
        return sorted((r for r in self.list() if r.state == QUEUED), key=lambda r: r.created)

    def size(self, job_id: str) -> int:
        return sum(p.stat().st_size for p in (self.root / job_id).rglob("*") if p.is_file())

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._records.pop(job_id, None)
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def prune(self, max_age_s: float | None, max_bytes: int | None, now: float | None = None) -> list[str]:
        """Delete finished jobs older than ``max_age_s``, then the oldest finished ones while the store is
        larger than ``max_bytes``. Queued and running jobs are never touched."""
        now = time.time() if now is None else now
        finished = sorted((r for r in self.list() if r.done), key=lambda r: r.finished or r.created)
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
