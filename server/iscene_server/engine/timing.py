"""Wall time per pipeline phase, measured so that a GPU phase is charged for the kernels it launched."""

from __future__ import annotations

import time

import torch


class Timer:
    """Accumulates wall time per named phase. Every reading first waits for queued CUDA work, so a phase is
    charged for the kernels it launched; readings are taken at stage boundaries only, never inside loops."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.gpu_finished_at: float | None = None
        self._last = self._now()

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, name: str) -> None:
        """Charge the time since the previous reading to ``name``."""
        now = self._now()
        self.add(name, now - self._last)
        self._last = now

    def add(self, name: str, seconds: float) -> None:
        """Charge work measured elsewhere (a worker process) to ``name``."""
        self.timings[name] = self.timings.get(name, 0.0) + seconds

    def skip(self) -> None:
        """Start the next phase now, charging the time since the previous reading to no phase."""
        self._last = self._now()

    def gpu_done(self) -> None:
        """Record the last reading (taken when a GPU phase ended, after its kernels) as the end of GPU work."""
        self.gpu_finished_at = self._last
