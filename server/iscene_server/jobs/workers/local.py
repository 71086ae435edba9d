"""A worker on a device of this machine: its models are loaded in this process and its jobs run on the
service's worker thread."""

from __future__ import annotations

import gc
import threading

import torch

from ...engine.progress import ProgressTracker
from ..runner import default_steps
from .base import JobRun, Worker
from .execute import execute
from .models import ModelSettings, WorkerModels


class LocalWorker(Worker):
    def __init__(self, name: str, settings: ModelSettings):
        self.name = name
        self.models = WorkerModels(settings)
        self._loader: threading.Thread | None = None

    def start(self) -> None:
        self._loader = threading.Thread(target=self.models.load, name=f"iscene-model-loader-{self.name}", daemon=True)
        self._loader.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self.models.loaded.wait(timeout)

    def model_status(self) -> dict:
        status = self.models.status
        return {"state": status.state, "message": status.message, "error": status.error}

    def describe(self) -> dict:
        pipeline, device = self.models.pipeline, self.models.device()
        return {"name": self.name, "device": str(device) if device is not None else self.models.settings.device,
                "dtype": self.models.dtype_name(), **self.model_status(), "vram": self.models.vram(),
                "models": pipeline.package.model_ids() if pipeline else None,
                "segment_loaded": self.models.segmenter_loaded}

    def cost_key(self, scene: bool) -> str | None:
        return self.models.cost_key(scene)

    def default_steps(self) -> tuple[int, int]:
        return default_steps(self.models.pipeline)

    def run(self, job: JobRun) -> None:
        tracker = ProgressTracker(job.plan, job.on_update, job.cancel, job.clock,
                                  time_limit_s=job.time_limit_s, predicted=True)
        try:
            execute(self.models, job.kind, job.params, job.inputs, job.folder, job.parent_folder, tracker,
                    job.publisher)
        finally:
            job.stage_seconds = tracker.stage_seconds()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the memory of a failed or cancelled job back

    def close(self) -> None:
        self.models.close()
