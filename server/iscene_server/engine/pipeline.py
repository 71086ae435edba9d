"""The I-Scene scene pipeline: image + label map -> per-instance results.

Stages: preprocess (slot images) -> condition (DINOv2 tokens) -> stage 1 (sparse structure).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from .conditioning import encode_images
from .packages.layouts import IScenePackage
from .packages.loader import ModelSet, resolve_device, resolve_dtype
from .preprocess import SceneInput, SceneSlots, build_slots
from .progress import ProgressTracker
from .stage1 import SceneStructure, Stage1

DEFAULT_SEED = 42  # the I-Scene inferencer's default
STAGE1_PLAN = {"preprocess": 1.0, "condition": 1.0, "stage1": 20.0, "decode": 1.0}


@dataclass
class Stage1Request:
    """What to generate: seeds, an optional subset of labels and frame, sampler overrides."""

    seed: int = DEFAULT_SEED
    seeds: dict[int, int] = field(default_factory=dict)  # per-label seed overrides
    labels: list[int] | None = None
    scene_box: tuple[float, float, float, float] | None = None
    steps: int | None = None
    cfg_strength: float | None = None

    def seed_for(self, label: int) -> int:
        return int(self.seeds.get(label, self.seed))


@dataclass
class Stage1Result:
    slots: SceneSlots
    structure: SceneStructure
    settings: dict
    timings: dict[str, float]


class ScenePipeline:
    def __init__(self, models: ModelSet):
        self.models = models
        self.package = models.package

    @classmethod
    def from_pretrained(cls, spec: str, device: str = "auto", dtype: str = "auto") -> "ScenePipeline":
        package = IScenePackage.open(spec)
        target = resolve_device(device)
        return cls(ModelSet(package, target, resolve_dtype(target, dtype)))

    @property
    def device(self) -> torch.device:
        return self.models.device

    def _conditions(self, slots: SceneSlots) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene-slot tokens ``[T, C]`` (encoded once) and each instance's own-slot tokens ``[K, N-1, T, C]``."""
        conditioner = self.models.get("image_conditioner")
        names = slots.slot_names()
        own = [slots.instances if name == "scene_space_instance" else slots.canonical
               for name in names if name != "scene_space_scene"]
        scene = encode_images(conditioner, slots.scene[None], self.device)[0]
        per_instance = torch.stack([encode_images(conditioner, images, self.device) for images in own], dim=1)
        return scene, per_instance

    def stage1(self, scene: SceneInput, request: Stage1Request = Stage1Request(),
               progress: ProgressTracker | None = None) -> Stage1Result:
        progress = progress or ProgressTracker(STAGE1_PLAN)
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        progress.begin("preprocess")
        slots = build_slots(scene, self.package.exp_setting, request.labels, request.scene_box)
        timings["preprocess"], clock = time.perf_counter() - clock, time.perf_counter()

        progress.begin("condition")
        scene_cond, instance_cond = self._conditions(slots)
        timings["condition"], clock = time.perf_counter() - clock, time.perf_counter()

        settings = self.package.sampler("sparse_structure_sampler", steps=request.steps,
                                        cfg_strength=request.cfg_strength)
        if settings.steps < 1:
            raise InputError(f"stage-1 steps must be at least 1 (got {settings.steps})", "use 25 for full quality")
        stage1 = Stage1(self.models.get("denoiser"), self.models.get("sparse_structure_decoder"), settings,
                        self.device)
        seeds = [request.seed_for(label) for label in slots.label_ids]
        progress.begin("stage1", settings.steps)
        scene_latent, latents = stage1.sample(scene_cond, instance_cond, request.seed, seeds, progress.step)
        timings["stage1"], clock = time.perf_counter() - clock, time.perf_counter()

        progress.begin("decode")
        structure = stage1.assemble(slots.label_ids, seeds, request.seed, scene_latent, latents)
        timings["decode"] = time.perf_counter() - clock
        progress.finish()
        return Stage1Result(slots, structure, _describe(settings), timings)


def _describe(settings) -> dict:
    return {"steps": settings.steps, "cfg_strength": settings.cfg_strength,
            "cfg_interval": list(settings.cfg_interval), "rescale_t": settings.rescale_t,
            "sigma_min": settings.sigma_min}
