"""Progress of long work: stage, step i/n, overall fraction, ETA from planned stage costs and measured step times;
cancellation.

The engine reports through a :class:`ProgressTracker`; listeners (the CLI's bar, the job API) receive
:class:`ProgressUpdate` values. A set cancel event makes the next report or :meth:`ProgressTracker.check_cancelled`
raise :class:`Cancelled`; long work passes ``check_cancelled`` down as a plain callable and calls it between pieces
of work that take well under a second, so cancelling takes effect within a second in every stage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import Cancelled, ISceneError

PRIOR_SHARE = 0.25  # a prediction counts as much as this share of the job measured exactly on plan


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
    """Stages planned in the order of ``plan`` (stage -> cost); each stage counts its own steps.

    ``plan`` holds relative costs, or with ``predicted=True`` each stage's predicted seconds (:mod:`.eta`), which
    gives an ETA from the start. The ETA is the current stage's remaining steps at their measured rate, plus the
    planned cost of the stages still to come times how this job's work so far compared with its plan (the
    weighted median of the stages' measured / planned ratios, with the prediction itself as a prior): a relative
    plan is so turned into seconds, and a stage that runs unusually slowly in this job does not make every later
    stage look slow.

    Beginning a stage passes over the planned stages before it that have not run (skipped work). :meth:`finish`
    ends the current stage; the job is done (listeners get stage ``"done"``) once no planned stage is left, so
    stages planned after the engine's own work (export) are run by the caller, who then calls :meth:`finish` again.
    """

    def __init__(self, plan: Mapping[str, float], listener: Listener | None = None,
                 cancel: threading.Event | None = None, clock: Callable[[], float] = time.monotonic,
                 time_limit_s: float | None = None, *, predicted: bool = False):
        self.plan = {name: max(0.0, float(cost)) for name, cost in plan.items()}
        total = sum(self.plan.values()) or 1.0
        self.weights = {name: cost / total for name, cost in self.plan.items()}
        self.prior_weight = PRIOR_SHARE * sum(self.plan.values()) if predicted else 0.0
        self.predicted = predicted
        self.listener = listener
        self.cancel = cancel
        self.clock = clock
        self.time_limit_s = time_limit_s
        self.started = clock()
        self.stage: str | None = None
        self.total = 1
        self.stage_started = self.started
        self.durations: dict[str, float] = {}  # seconds of every stage that has ended
        self.passed_over: list[str] = []  # planned stages skipped because a later one began
        self.pending = list(self.plan)  # planned stages not begun yet
        self.done = False

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
        self._end_stage()
        if stage in self.pending:
            index = self.pending.index(stage)
            self.passed_over += self.pending[:index]
            del self.pending[:index + 1]
        self.stage, self.total, self.stage_started = stage, max(1, total), self.clock()
        self._emit(0)

    def step(self, step: int, total: int | None = None, *_: object) -> None:
        """Report ``step`` of the current stage done; usable as a sampler callback."""
        if total is not None:
            self.total = max(1, total)
        self._emit(step)
        self.check_cancelled()

    def finish(self) -> None:
        """End the current stage; with no planned stage left, the job is done."""
        self._end_stage()
        if self.pending or self.done:
            return
        self.done = True
        if self.listener:
            self.listener(ProgressUpdate("done", 1, 1, 1.0, 0.0, self.clock() - self.started))

    def stage_seconds(self) -> dict[str, float]:
        """Measured seconds of every stage that ran to its end (0 for the planned stages passed over), in the
        order they ran: what a cost model learns from (a stage cut short by a cancel is not in it)."""
        return {**dict.fromkeys(self.passed_over, 0.0), **self.durations}

    def _end_stage(self) -> None:
        if self.stage is not None:
            self.durations[self.stage] = self.durations.get(self.stage, 0.0) + self.clock() - self.stage_started
            self.stage = None

    def _emit(self, step: int) -> None:
        now = self.clock()
        stage = self.stage or ""
        first_run = stage not in self.durations  # a stage begun again already counted in full
        partial = min(1.0, step / self.total) if first_run else 0.0
        fraction = sum(self.weights[s] for s in (*self.durations, *self.passed_over) if s in self.weights)
        fraction = min(1.0, fraction + self.weights.get(stage, 0.0) * partial)
        if self.listener:
            eta = self._eta(stage, step, now - self.stage_started, partial, first_run)
            self.listener(ProgressUpdate(stage, step, self.total, fraction, eta, now - self.started))

    def _eta(self, stage: str, step: int, in_stage: float, partial: float, first_run: bool) -> float | None:
        scale = self._scale(stage, in_stage, partial)
        if step > 0:
            current = in_stage / step * max(0, self.total - step)
        elif scale is not None:
            current = max(0.0, self.plan.get(stage, 0.0) * scale - in_stage) if first_run else 0.0
        else:
            return None
        if scale is None:
            return None if any(self.plan[s] > 0 for s in self.pending) else current
        return current + scale * sum(self.plan[s] for s in self.pending)

    def _scale(self, stage: str, in_stage: float, partial: float) -> float | None:
        """Seconds per planned unit for the stages to come: the weighted median of the measured / planned ratios
        of the work done (weights: its planned cost), with ratio 1 weighted :data:`PRIOR_SHARE` of the plan for a
        prediction; None while a relative plan has nothing measured."""
        ratios = [(1.0, self.prior_weight)] if self.prior_weight > 0 else []
        ratios += [(seconds / self.plan[s], self.plan[s]) for s, seconds in self.durations.items()
                   if self.plan.get(s, 0.0) > 0]
        planned_now = self.plan.get(stage, 0.0) * partial
        if planned_now > 0:
            ratios.append((in_stage / planned_now, planned_now))
        if not ratios:
            return 1.0 if self.predicted else None
        return weighted_median(ratios)


def weighted_median(pairs: list[tuple[float, float]]) -> float:
    """The value at half the total weight of ``(value, weight)`` pairs (the mean of the two values a tie sits
    between)."""
    ordered = sorted(pairs)
    half = sum(weight for _, weight in ordered) / 2
    running = 0.0
    for index, (value, weight) in enumerate(ordered):
        running += weight
        if running > half:
            return value
        if running == half:
            return (value + ordered[index + 1][0]) / 2 if index + 1 < len(ordered) else value
    return ordered[-1][0]
