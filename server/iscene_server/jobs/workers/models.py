"""The models one worker runs jobs with, on its one device: the I-Scene pipeline (loaded once, in the
background, so that the server answers while it loads) and the SAM segmenter (made on the first segment job)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import torch

from ...devices import resolve_device
from ...engine.eta import device_key
from ...engine.packages.layouts import PACKAGE_ROLES
from ...engine.pipeline import ScenePipeline
from ...errors import ISceneError
from ...segment import require as require_segmentation
from ...segment.model import SamSegmenter

log = logging.getLogger("iscene.jobs")


@dataclass
class ModelStatus:
    state: str = "loading"  # loading | ready | error
    message: str = "starting"
    error: dict | None = None  # the error dict (code, message, hint) once state is "error"


@dataclass
class ModelSettings:
    """What a worker loads: the model package, the device and dtype it runs in, and the segmentation model."""
    model: str
    device: str = "auto"
    dtype: str = "auto"
    segment_model: str = ""
    compile: str | bool = "auto"


@dataclass
class WorkerModels:
    settings: ModelSettings
    status: ModelStatus = field(default_factory=ModelStatus)
    pipeline: ScenePipeline | None = field(default=None, repr=False)
    loaded: threading.Event = field(default_factory=threading.Event, repr=False)  # set once loading ended
    _segmenter: SamSegmenter | None = field(default=None, repr=False)

    def load(self) -> None:
        """Load the pipeline (every role, so the first job does not wait); any failure becomes :attr:`status`."""
        s, status = self.settings, self.status
        try:
            status.message = f"opening model package {s.model}"
            pipeline = ScenePipeline.from_pretrained(s.model, s.device, s.dtype, compile=s.compile)
            for index, role in enumerate(PACKAGE_ROLES, 1):
                status.message = f"loading {role} ({index}/{len(PACKAGE_ROLES)})"
                pipeline.models.get(role)
            self.pipeline = pipeline
            status.state, status.message = "ready", "ready"
        except ISceneError as exc:
            status.state, status.message, status.error = "error", exc.message, exc.to_dict()
        except Exception as exc:  # a broken install must still leave a server that explains itself
            log.exception("loading the model failed")
            status.state, status.message = "error", f"{type(exc).__name__}: {exc}"
            status.error = {"code": "model_load_failed", "message": status.message,
                            "hint": "see the server log; check --model, --device and the installation"}
        finally:
            self.loaded.set()

    def segmenter(self) -> SamSegmenter:
        """The SAM segmenter, made on first use (it loads its weights on its first job)."""
        require_segmentation()
        if self._segmenter is None:
            self._segmenter = SamSegmenter(self.settings.segment_model, self.settings.device, self.settings.dtype)
        return self._segmenter

    @property
    def segmenter_loaded(self) -> bool:
        return self._segmenter is not None and self._segmenter.loaded

    def device(self) -> torch.device | None:
        """The device jobs run on; None while the setting cannot be resolved (a job will say why)."""
        if self.pipeline is not None:
            return self.pipeline.device
        try:
            return resolve_device(self.settings.device)
        except ISceneError:
            return None

    def device_name(self) -> str | None:
        """The device with the GPU's name (``"cuda:0 NVIDIA H200"``): what its costs are learned under."""
        device = self.device()
        if device is None:
            return None
        name = str(device)
        if device.type == "cuda" and torch.cuda.is_available():
            name += f" {torch.cuda.get_device_name(device)}"
        return name

    def vram(self) -> dict | None:
        """Free and total memory of its GPU (None on the CPU)."""
        device = self.device()
        if device is None or device.type != "cuda" or not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info(device)
        return {"free_mb": free // 2 ** 20, "total_mb": total // 2 ** 20, "name": torch.cuda.get_device_name(device)}

    def dtype_name(self) -> str:
        """The dtype scene jobs run in (the setting until the pipeline is loaded)."""
        if self.pipeline is None:
            return self.settings.dtype
        return str(self.pipeline.models.dtype).removeprefix("torch.")

    def cost_key(self, scene: bool) -> str | None:
        """Whose costs a job runs at (:mod:`...engine.eta`): the model on this device in its dtype; a scene job's
        (``scene``) only once the pipeline is loaded, a segment job's at the segmentation model's."""
        if scene and self.pipeline is None:
            return None
        name = self.device_name()
        if name is None:
            return None
        if scene:
            return device_key(self.settings.model, name, self.dtype_name())
        return device_key(self.settings.segment_model, name, self.settings.dtype)

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()  # the clean-up worker processes
