"""CPU work that overlaps the GPU: per-object mesh clean-up (and texture bake) and the camera solve, in a
process pool.

fast-simplification keeps the mesh it works on in C++ module globals, so clean-ups cannot share a process;
each worker process runs one at a time. Workers come from a ``forkserver`` (``spawn`` where there is none):
never a fork of the engine process, whose torch threads are running. The forkserver preloads only this
module, so workers import numpy, scipy, fast-simplification and xatlas — not torch, nor the program's ``__main__`` —
and start in a fraction of a second. The pool is created on first use, reused across jobs, and rebuilt after
a worker dies.

Nothing in this module may import torch: it is what every worker imports.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..cores import usable_cores
from ..errors import ISceneError
from ..geometry.postprocess import ColoredMesh, remove_floaters, simplify
from ..geometry.texture.bake import bake_texture
from .camera.solve import CameraFit, solve_camera

WAIT_S = 0.1  # how often a wait on the pool looks at the cancel flag
MAX_WORKERS = 6  # a 6-object scene cleans every object at once; more processes only cost memory


def default_workers() -> int:
    """One worker per CPU core but one (the engine process keeps a core), at least 1, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, usable_cores() - 1))


@dataclass(frozen=True, eq=False)
class CleanupTask:
    """One object's extracted mesh and the clean-up settings (everything a worker needs, picklable)."""

    label: int
    mesh: ColoredMesh
    min_fraction: float
    target_faces: int | None
    texture_size: int | None = None  # bake a texture this many texels wide; None: vertex colours only


@dataclass(frozen=True, eq=False)
class Timed:
    """A worker's result and the seconds of work it took (the stage timings sum these)."""

    value: object
    seconds: float


def clean_mesh(task: CleanupTask) -> Timed:
    """Floaters, decimation, colours and the texture bake for one object (the work a pool worker does): the
    texture samples the mesh as extracted (floaters dropped), before decimation averaged its colours."""
    started = time.perf_counter()
    kept = remove_floaters(task.mesh, task.min_fraction)
    mesh = simplify(kept, task.target_faces)
    if task.texture_size is not None:
        mesh = bake_texture(mesh, kept, task.texture_size)
    return Timed(mesh, time.perf_counter() - started)


def fit_camera(voxels: dict[int, np.ndarray], ids: np.ndarray, crop_box) -> Timed:
    """The camera solve (pure numpy), timed, for a pool worker."""
    started = time.perf_counter()
    fit: CameraFit = solve_camera(voxels, ids, crop_box)
    return Timed(fit, time.perf_counter() - started)


def _start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class CleanupPool:
    """A process pool for the engine's CPU work; ``workers=0`` runs everything inline (for debugging)."""

    def __init__(self, workers: int | None = None):
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 0:
            raise ValueError(f"cleanup workers must be >= 0, got {self.workers}")
        self._executor: cf.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> cf.ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context(_start_method())
                if context.get_start_method() == "forkserver":
                    context.set_forkserver_preload([__name__])
                self._executor = cf.ProcessPoolExecutor(self.workers, mp_context=context)
            return self._executor

    def submit(self, function: Callable, *args) -> cf.Future:
        """Run ``function(*args)`` in a worker (inline when ``workers == 0``: the future is already done)."""
        if self.workers == 0:
            future: cf.Future = cf.Future()
            try:
                future.set_result(function(*args))
            except Exception as exc:  # the caller sees it through the future, as with a worker
                future.set_exception(exc)
            return future
        try:
            return self._pool().submit(function, *args)
        except cf.BrokenExecutor:  # a worker died since the last job: start a fresh pool
            self._discard()
            return self._pool().submit(function, *args)

    def result(self, future: cf.Future, what: str, check: Callable[[], None]):
        """``future``'s result, looking at ``check`` (which raises to cancel) every ``WAIT_S`` while waiting.

        A dead worker or an exception in the task raises an :class:`ISceneError` naming ``what`` failed;
        a dead worker also discards the pool, so the next job gets a fresh one.
        """
        while True:
            check()
            try:
                return future.result(timeout=WAIT_S)
            except cf.TimeoutError:
                continue
            except cf.BrokenExecutor as exc:
                self._discard()
                raise ISceneError(f"the worker process doing the {what} died ({exc})",
                                  "the machine may be out of memory: lower the target face count or the "
                                  "number of objects, then try again", code="worker_failed") from exc
            except cf.CancelledError:
                raise
            except Exception as exc:
                raise ISceneError(f"the {what} failed: {type(exc).__name__}: {exc}",
                                  "this is a bug in the server; please report it with the job's inputs",
                                  code="worker_failed") from exc

    @staticmethod
    def cancel(futures: Iterable[cf.Future]) -> None:
        """Drop work that has not started; running tasks finish in their worker and are ignored."""
        for future in futures:
            future.cancel()

    def _discard(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the workers (waiting for running tasks); the pool starts again if used afterwards."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
