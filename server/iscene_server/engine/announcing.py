"""Announcing a scene's results as they become final, to a :class:`~.listener.ResultListener`.

* :class:`LayoutAnnouncer`: the camera solve of a new frame runs in a worker while the caller goes on (stage 2);
  the layout is announced once stage 1 and that solve are done, and always before any object.
* :class:`FinalInstances`: decoded objects whose meshes are cleaned up in the workers, each announced as soon as
  its clean-up is done (in the order they finish; the results keep the decoding order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cleanup import CleanupPool, fit_camera
from .listener import ResultListener
from .progress import ProgressTracker
from .timing import Timer

if TYPE_CHECKING:  # the pipeline imports this module
    from .camera.solve import CameraFit
    from .pipeline import InstanceResult, Stage1Request, Stage1Result
    from .preprocess import SceneInput


class LayoutAnnouncer:
    """The camera solve of a new frame (``request.scene_box`` None; a regeneration keeps its parent's camera),
    run in a worker while the caller goes on, and the listener's ``layout`` call once stage 1 and that solve
    are done: :meth:`poll` announces it if the solve has finished, :meth:`wait` waits for it."""

    def __init__(self, workers: CleanupPool, first: Stage1Result, scene: SceneInput, request: Stage1Request,
                 progress: ProgressTracker, timer: Timer, listener: ResultListener | None = None):
        self.workers = workers
        self.first = first
        self.progress = progress
        self.timer = timer
        self.listener = listener or ResultListener()
        self.camera: CameraFit | None = None
        self.announced = False
        self.solving = None
        if request.scene_box is None:
            voxels = {i.label: i.coords for i in first.structure.instances}
            self.solving = self.workers.submit(fit_camera, voxels, scene.ids, first.slots.scene_box)

    def poll(self) -> None:
        if not self.announced and (self.solving is None or self.solving.done()):
            self.wait()

    def wait(self) -> None:
        if self.announced:
            return
        if self.solving is not None:
            solved = self.workers.result(self.solving, "camera solve", self.progress.check_cancelled)
            self.camera = solved.value
            self.timer.add("camera", solved.seconds)
        self.announced = True
        self.listener.layout(self.first, self.camera)

    def after_layout(self) -> ResultListener:
        """A listener that hands each instance on only after the layout was announced (waiting for it)."""
        return AfterLayout(self)

    def close(self) -> None:
        if self.solving is not None:
            self.workers.cancel([self.solving])


class AfterLayout(ResultListener):
    def __init__(self, announcer: LayoutAnnouncer):
        self.announcer = announcer

    def instance(self, result: InstanceResult) -> None:
        self.announcer.wait()
        self.announcer.listener.instance(result)


class FinalInstances:
    """Decoded instances whose meshes may still be cleaned up in the workers: each is handed to the listener as
    soon as it is final, in the order the clean-ups finish (the results keep the decoding order)."""

    def __init__(self, workers: CleanupPool, listener: ResultListener, progress: ProgressTracker, timer: Timer):
        self.workers = workers
        self.listener = listener
        self.progress = progress
        self.timer = timer
        self.results: list[InstanceResult] = []
        self.cleaning: dict[int, object] = {}  # index -> the clean-up future of its mesh
        self.final: set[int] = set()

    def add(self, result: InstanceResult, cleaning) -> None:
        if cleaning is not None:
            self.cleaning[len(self.results)] = cleaning
        self.results.append(result)

    def _ready(self) -> list[int]:
        return [i for i in range(len(self.results))
                if i not in self.final and (i not in self.cleaning or self.cleaning[i].done())]

    def publish(self, wait: bool) -> None:
        """Hand on every instance that is final now; with ``wait``, wait until all are (the first pending one
        at a time, publishing whatever finished meanwhile)."""
        while True:
            ready = self._ready()
            pending = [i for i in range(len(self.results)) if i not in self.final]
            if not ready and (not wait or not pending):
                self.progress.step(len(self.final))
                return
            for index in ready or pending[:1]:
                self._finalise(index)

    def _finalise(self, index: int) -> None:
        result = self.results[index]
        future = self.cleaning.get(index)
        if future is not None:
            cleaned = self.workers.result(future, f"mesh clean-up of instance {result.label}",
                                          self.progress.check_cancelled)
            result.mesh = cleaned.value
            self.timer.add("mesh_cleanup", cleaned.seconds)
        self.final.add(index)
        self.listener.instance(result)
        self.progress.step(len(self.final))

    def close(self) -> None:
        self.workers.cancel(self.cleaning.values())
