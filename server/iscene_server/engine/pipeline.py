"""The I-Scene scene pipeline: image + label map -> per-instance results.

Stages: preprocess (slot images) -> condition (DINOv2 tokens) -> stage 1 (sparse structure) ->
stage 2 (structured latents) -> meshes (decode, FlexiCubes, clean-up) and optional Gaussians.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..geometry.export import GaussianParams
from ..geometry.postprocess import ColoredMesh, postprocess
from .camera.solve import CameraFit, solve_camera
from .conditioning import encode_images
from .packages.layouts import IScenePackage
from .packages.loader import ModelSet, resolve_device, resolve_dtype
from .preprocess import SceneInput, SceneSlots, build_slots
from .progress import ProgressTracker
from .stage1 import InstanceStructure, SceneStructure, Stage1
from .stage2 import MeshFrame, Stage2

DEFAULT_SEED = 42  # the I-Scene inferencer's default
STAGE1_PLAN = {"preprocess": 1.0, "condition": 1.0, "stage1": 20.0, "decode": 1.0}
GENERATE_PLAN = {**STAGE1_PLAN, "stage2": 20.0, "meshes": 8.0}
FORMATS = ("mesh", "gaussian")
STAGE2_BATCH = 8  # instances sampled together in stage 2


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
class GenerationRequest(Stage1Request):
    """A whole scene: stage-1 options plus stage 2, mesh clean-up and output formats."""

    slat_steps: int | None = None
    slat_cfg_strength: float | None = None
    formats: tuple[str, ...] = ("mesh",)
    target_faces: int = 50_000
    min_floater_fraction: float = 0.02
    mesh_grid: str = "iscene"

    def __post_init__(self):
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise InputError(f"unknown output format(s) {', '.join(unknown) or '(none given)'}",
                             f"choose from {', '.join(FORMATS)}")
        if self.target_faces < 100:
            raise InputError(f"target face count {self.target_faces} is too small", "use at least 100 faces")


@dataclass
class InstanceResult:
    structure: InstanceStructure
    mesh: ColoredMesh | None
    gaussians: GaussianParams | None
    extracted_faces: int  # before clean-up and decimation

    @property
    def label(self) -> int:
        return self.structure.label


@dataclass
class SceneResult:
    slots: SceneSlots
    scene_seed: int
    scene_latent: torch.Tensor
    instances: list[InstanceResult]
    settings: dict
    timings: dict[str, float]
    mesh_frame: MeshFrame
    camera: CameraFit | None = None  # None: keep the parent scene's camera


@dataclass
class Stage1Result:
    slots: SceneSlots
    structure: SceneStructure
    settings: dict
    timings: dict[str, float]
    instance_cond: torch.Tensor  # [K, N-1, T, C] condition tokens of each instance's own slots


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

    def conditions(self, slots: SceneSlots) -> tuple[torch.Tensor, torch.Tensor]:
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
        result = self._stage1(scene, request, progress, Timer())
        progress.finish()
        return result

    def _stage1(self, scene: SceneInput, request: Stage1Request, progress: ProgressTracker,
                timer: "Timer") -> Stage1Result:
        progress.begin("preprocess")
        slots = build_slots(scene, self.package.exp_setting, request.labels, request.scene_box)
        timer.lap("preprocess")

        progress.begin("condition")
        scene_cond, instance_cond = self.conditions(slots)
        timer.lap("condition")

        settings = self.package.sampler("sparse_structure_sampler", steps=request.steps,
                                        cfg_strength=request.cfg_strength)
        check_steps(settings.steps, "stage-1")
        stage1 = Stage1(self.models.get("denoiser"), self.models.get("sparse_structure_decoder"), settings,
                        self.device)
        seeds = [request.seed_for(label) for label in slots.label_ids]
        progress.begin("stage1", settings.steps)
        scene_latent, latents = stage1.sample(scene_cond, instance_cond, request.seed, seeds, progress.step)
        timer.lap("stage1")

        progress.begin("decode")
        structure = stage1.assemble(slots.label_ids, seeds, request.seed, scene_latent, latents)
        timer.lap("decode")
        return Stage1Result(slots, structure, describe_settings(settings), timer.timings, instance_cond)

    def generate(self, scene: SceneInput, request: GenerationRequest = GenerationRequest(),
                 progress: ProgressTracker | None = None) -> SceneResult:
        """The whole scene (or ``request.labels`` of it): occupancy, latents, meshes, Gaussians."""
        progress = progress or ProgressTracker(GENERATE_PLAN)
        timer = Timer()
        first = self._stage1(scene, request, progress, timer)
        camera = None
        if request.scene_box is None:  # a new frame: fit its camera (regenerations keep their parent's)
            voxels = {i.label: i.coords for i in first.structure.instances}
            camera = solve_camera(voxels, scene.ids, first.slots.scene_box)
            timer.lap("camera")
        results, settings, frame = self.finish_instances(first.structure.instances, first.instance_cond[:, 0],
                                                         request, progress, timer)
        progress.finish()
        return SceneResult(first.slots, request.seed, first.structure.scene_latent, results,
                           {"stage1": first.settings, "stage2": settings}, timer.timings, frame, camera)

    def finish_instances(self, instances: list[InstanceStructure], cond: torch.Tensor, request: GenerationRequest,
                         progress: ProgressTracker, timer: "Timer") -> tuple[list[InstanceResult], dict, MeshFrame]:
        """Stage 2 and decoding for instances whose occupancy is known; ``cond [K, T, C]`` are their
        scene-space instance slot tokens. Returns the results, the stage-2 settings and the mesh frame."""
        settings = self.package.sampler("slat_sampler", steps=request.slat_steps,
                                        cfg_strength=request.slat_cfg_strength)
        check_steps(settings.steps, "stage-2")
        stage2 = Stage2(self.models.get("slat_flow_model"), self.models.get("slat_decoder_mesh"), settings,
                        self.package.base.args["slat_normalization"], self.device,
                        self.models.get("slat_decoder_gs") if "gaussian" in request.formats else None,
                        request.mesh_grid)
        progress.begin("stage2", settings.steps * _batches(len(instances)))
        latents = []
        for start in range(0, len(instances), STAGE2_BATCH):
            chunk = instances[start:start + STAGE2_BATCH]
            done = start // STAGE2_BATCH * settings.steps
            latents.append(stage2.sample([i.coords for i in chunk], cond[start:start + len(chunk)],
                                         [i.seed for i in chunk], self.models.get("denoiser").num_slots,
                                         lambda step, total, t: progress.step(done + step)))
        timer.lap("stage2")

        progress.begin("meshes", len(instances))
        results = []
        for index, inst in enumerate(instances):
            batch = latents[index // STAGE2_BATCH]
            results.append(self._decode(stage2, batch, index % STAGE2_BATCH, inst, request, timer))
            progress.step(index + 1)
        return results, describe_settings(settings), stage2.frame

    def _decode(self, stage2: Stage2, latents, index: int, inst: InstanceStructure, request: GenerationRequest,
                timer: "Timer") -> InstanceResult:
        mesh, extracted, gaussians = None, 0, None
        if "mesh" in request.formats:
            head = stage2.mesh_head(latents, index)
            timer.lap("mesh_decoder")
            raw = stage2.extract(head)
            timer.lap("extraction")
            extracted = int(raw.faces.shape[0])
            if extracted:
                mesh = postprocess(ColoredMesh(raw.vertices.cpu().numpy(), raw.faces.cpu().numpy(),
                                               raw.vertex_attrs[:, :3].cpu().numpy()),
                                   min_fraction=request.min_floater_fraction, target_faces=request.target_faces)
            timer.lap("mesh_cleanup")
        if "gaussian" in request.formats:
            params = stage2.decode_gaussians(latents, index)
            gaussians = GaussianParams(params.xyz.cpu().numpy(), params.features_dc.cpu().numpy(),
                                       params.opacity.cpu().numpy(), params.scaling.cpu().numpy(),
                                       params.rotation.cpu().numpy())
            timer.lap("gaussian_decode")
        return InstanceResult(inst, mesh, gaussians, extracted)

class Timer:
    """Accumulates wall time per named phase."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._last
        self._last = now


def _batches(count: int) -> int:
    return max(1, -(-count // STAGE2_BATCH))


def check_steps(steps: int, stage: str) -> None:
    if steps < 1:
        raise InputError(f"{stage} steps must be at least 1 (got {steps})", "use 25 for full quality")


def describe_settings(settings) -> dict:
    return {"steps": settings.steps, "cfg_strength": settings.cfg_strength,
            "cfg_interval": list(settings.cfg_interval), "rescale_t": settings.rescale_t,
            "sigma_min": settings.sigma_min}
