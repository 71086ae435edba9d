"""Progress of long work: stage, step i/n, overall fraction, ETA from measured step times; cancellation.

The engine reports through a :class:`ProgressTracker`; listeners (the CLI's bar, the job API) receive
:class:`ProgressUpdate` values. A set cancel event makes the next report raise :class:`Cancelled`, so
cancellation takes effect within one sampling step.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from ..errors import Cancelled, ISceneError


@dataclass(frozen=True)
class ProgressUpdate:
    stage: str
    step: int
    total: int
    fraction: float  # of the whole job, 0..1
    eta_s: float | None  # seconds left for the whole job, once it can be estimated
    elapsed_s: float


Listener = Callable[[ProgressUpdate], None]


class ProgressTracker:
    """Weighted stages (``plan``: stage -> relative cost); each stage counts its own steps."""

    def __init__(self, plan: Mapping[str, float], listener: Listener | None = None,
                 cancel: threading.Event | None = None, clock: Callable[[], float] = time.monotonic,
                 time_limit_s: float | None = None):
        total = sum(plan.values()) or 1.0
        self.weights = {name: w / total for name, w in plan.items()}
        self.listener = listener
        self.cancel = cancel
        self.clock = clock
        self.started = clock()
        self.done_weight = 0.0
        self.stage: str | None = None
        self.total = 1
        self.stage_started = self.started
        self.time_limit_s = time_limit_s

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if asked to stop, or a ``timeout`` error past the time limit."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled()
        if self.time_limit_s is not None and self.clock() - self.started > self.time_limit_s:
            raise ISceneError(f"the job ran longer than the server's limit of {self.time_limit_s:.0f} s",
                              "use fewer sampling steps or objects, or raise --job-timeout", code="timeout")

    def begin(self, stage: str, total: int = 1) -> None:
        """Start ``stage`` (finishing the previous one), which will report ``total`` steps."""
        self.check_cancelled()
        if self.stage is not None:
            self.done_weight += self.weights.get(self.stage, 0.0)
        self.stage, self.total, self.stage_started = stage, max(1, total), self.clock()
        self._emit(0)

    def step(self, step: int, total: int | None = None, *_: object) -> None:
        """Report ``step`` of the current stage done; usable as a sampler callback."""
        if total is not None:
            self.total = max(1, total)
        self._emit(step)
        self.check_cancelled()

    def finish(self) -> None:
        if self.stage is not None:
            self.done_weight += self.weights.get(self.stage, 0.0)
            self.stage = None
        self.done_weight = 1.0
        if self.listener:
            elapsed = self.clock() - self.started
            self.listener(ProgressUpdate("done", 1, 1, 1.0, 0.0, elapsed))

    def _emit(self, step: int) -> None:
        now = self.clock()
        weight = self.weights.get(self.stage, 0.0)
        fraction = min(1.0, self.done_weight + weight * step / self.total)
        eta = None
        if step > 0:
            stage_left = (now - self.stage_started) / step * (self.total - step)
            later = 1.0 - self.done_weight - weight
            rate = (now - self.started) / fraction if fraction > 0 else 0.0
            eta = stage_left + later * rate
        if self.listener:
            self.listener(ProgressUpdate(self.stage or "", step, self.total, fraction, eta, now - self.started))
