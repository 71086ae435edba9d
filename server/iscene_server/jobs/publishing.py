"""A running job's published results: the events ``layout``, ``instance`` and ``variant`` in its record.

The service makes one :class:`Publisher` per running job; the job's runner calls :meth:`Publisher.event` right
after the files an event announces are on disk (files are written atomically, so a listed file is complete).
Each event is saved with the job record at once, so a restart, a cancel or a failure keeps what was finished.
What the status reports (``layout_ready``, ``ready_labels``, ``ready_variants``) is derived from the events
alone (:func:`readiness`): one place for the fact.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..engine.listener import ResultListener
from ..errors import StorageError

if TYPE_CHECKING:  # names for the reader: the store imports this module (valid_events), so it stays light
    from ..engine.camera.solve import CameraFit
    from ..engine.pipeline import InstanceResult, Stage1Result
    from ..engine.results import SceneWriter
    from .store import JobStore

EVENTS = ("layout", "instance", "variant")
EVENT_FIELDS = {"layout": (), "instance": ("label",), "variant": ("label", "index")}


class Publisher:
    """Appends events to one job's record; thread-safe. ``t`` counts from when the publisher was made (the job
    started running)."""

    def __init__(self, store: JobStore, job_id: str, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.job_id = job_id
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()

    def event(self, name: str, **fields) -> dict:
        """Record event ``name`` with ``fields`` (``label`` for ``instance``; ``label`` and ``index`` for
        ``variant``) and return it."""
        if name not in EVENTS:
            raise ValueError(f"unknown event {name!r}")
        if set(fields) != set(EVENT_FIELDS[name]):
            raise ValueError(f"event {name!r} takes {EVENT_FIELDS[name]}, got {sorted(fields)}")
        with self._lock:
            events = list(self.store.get(self.job_id).events)
            entry = {"seq": len(events), "event": name, **{k: int(v) for k, v in fields.items()},
                     "t": round(self.clock() - self.started, 3)}
            with contextlib.suppress(StorageError):  # kept in memory; the store saves it once the disk takes it
                self.store.update(self.job_id, events=[*events, entry])
            return entry


def readiness(events: list[dict]) -> dict:
    """What a job's events say is downloadable: ``layout_ready``, ``ready_labels``, ``ready_variants``."""
    return {"layout_ready": any(e["event"] == "layout" for e in events),
            "ready_labels": sorted({e["label"] for e in events if e["event"] == "instance"}),
            "ready_variants": sorted({e["index"] for e in events if e["event"] == "variant"})}


def valid_events(value) -> bool:
    """Whether ``value`` is a list of events as :class:`Publisher` writes them (a stored record is checked)."""
    if not isinstance(value, list):
        return False
    for seq, event in enumerate(value):
        if not isinstance(event, dict) or event.get("seq") != seq or event.get("event") not in EVENTS:
            return False
        wanted = {"seq", "event", "t", *EVENT_FIELDS[event["event"]]}
        if set(event) != wanted or not isinstance(event["t"], (int, float)) or isinstance(event["t"], bool):
            return False
        if any(type(event[name]) is not int for name in EVENT_FIELDS[event["event"]]):
            return False
    return True


class PublishingListener(ResultListener):
    """Writes each result the pipeline announces into the job's folder, then publishes its event: the layout
    (proxies and partial manifest), then each instance's final files."""

    def __init__(self, writer: SceneWriter, publisher: Publisher):
        self.writer = writer
        self.publisher = publisher

    def layout(self, first: Stage1Result, camera: CameraFit | None) -> None:
        self.writer.write_layout(first, camera)
        self.publisher.event("layout")

    def instance(self, result: InstanceResult) -> None:
        self.writer.write_finished(result)
        self.publisher.event("instance", label=result.label)
