"""Clocks and memory for benchmarks: synchronised time stamps, the device's name, and per-stage peak memory
read by a progress listener.

CUDA launches are asynchronous: a host clock read right after a launch measures the launch, not the work. Every
stamp here first waits for the device, and only at stage boundaries (never inside a sampling loop).
"""

from __future__ import annotations

import platform
import resource
import time

import torch

MB = 2 ** 20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stamp(device: torch.device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` has finished."""
    synchronize(device)
    return time.perf_counter()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StagePeaks:
    """A :class:`~iscene_server.engine.progress.ProgressTracker` listener recording, for every stage, the peak
    CUDA memory allocated and reserved while it ran: at each stage change it waits for the device, reads the
    peaks for the stage that ended and resets them. On the CPU it records the stages only (no allocator stats).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.stage: str | None = None
        self.stages: list[str] = []  # in the order they began
        self.allocated_mb: dict[str, float] = {}
        self.reserved_mb: dict[str, float] = {}
        self.reset()

    def reset(self) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def __call__(self, update) -> None:
        if update.stage == self.stage:
            return
        self.end_stage()
        self.stage = None if update.stage == "done" else update.stage
        if self.stage is not None and self.stage not in self.stages:
            self.stages.append(self.stage)

    def end_stage(self) -> None:
        if self.stage is None or self.device.type != "cuda":
            return
        synchronize(self.device)
        allocated = torch.cuda.max_memory_allocated(self.device) / MB
        reserved = torch.cuda.max_memory_reserved(self.device) / MB
        self.allocated_mb[self.stage] = max(allocated, self.allocated_mb.get(self.stage, 0.0))
        self.reserved_mb[self.stage] = max(reserved, self.reserved_mb.get(self.stage, 0.0))
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> tuple[float, float] | None:
        """The largest allocated and reserved peaks over all stages (None on the CPU)."""
        if not self.allocated_mb:
            return None
        return max(self.allocated_mb.values()), max(self.reserved_mb.values())


class Laps:
    """Synchronised lap times: :meth:`lap` charges the time since the previous lap to a phase."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, float] = {}
        self.start = self.last = stamp(device)

    def lap(self, name: str) -> None:
        now = stamp(self.device)
        self.times[name] = self.times.get(name, 0.0) + now - self.last
        self.last = now

    @property
    def wall(self) -> float:
        return self.last - self.start
