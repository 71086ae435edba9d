"""The I-Scene scene pipeline: image + label map -> per-instance results.

Stages: preprocess (slot images) -> condition (DINOv2 tokens) -> stage 1 (sparse structure) ->
stage 2 (structured latents) -> meshes (decode, FlexiCubes, clean-up) and optional Gaussians.

The CPU work overlaps the GPU (engine/cleanup.py): the camera solve runs in a worker process while stage 2
samples, and each object's mesh clean-up while the GPU decodes the next object, so the GPU never waits on the
CPU and only the last object's clean-up is left once the GPU is done.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from ..devices import resolve_device, resolve_dtype
from ..errors import InputError
from ..geometry.ply import GaussianCloud
from ..geometry.postprocess import ColoredMesh
from .camera.solve import CameraFit
from .cancel import cancellation_points
from .cleanup import CleanupPool, CleanupTask, clean_mesh, fit_camera
from .conditioning import encode_images
from .eta import GENERATE_PLAN, STAGE1_PLAN
from .packages.layouts import IScenePackage
from .packages.loader import ModelSet
from .preprocess import SceneInput, SceneSlots, build_slots
from .progress import ProgressTracker
from .samplers import StepCallback
from .seeds import DEFAULT_SEED
from .stage1 import InstanceStructure, SceneStructure, Stage1
from .stage2 import MeshFrame, Stage2
from .timing import Timer

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
    gaussians: GaussianCloud | None
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
    gpu_finished_at: float | None = None  # time.perf_counter() when the last GPU decode finished


@dataclass
class Stage1Result:
    slots: SceneSlots
    structure: SceneStructure
    settings: dict
    timings: dict[str, float]
    instance_cond: torch.Tensor  # [K, N-1, T, C] condition tokens of each instance's own slots


class ScenePipeline:
    """The loaded networks and the worker pool for the CPU work; ``close()`` stops the workers.

    ``cleanup_workers``: worker processes for mesh clean-up and the camera solve (default: one per core but
    one, at most 6); 0 runs them inline, one after another, which is slower but easy to debug.
    """

    def __init__(self, models: ModelSet, cleanup_workers: int | None = None):
        self.models = models
        self.package = models.package
        self.workers = CleanupPool(cleanup_workers)

    @classmethod
    def from_pretrained(cls, spec: str, device: str = "auto", dtype: str = "auto",
                        cleanup_workers: int | None = None, compile: str | bool = "auto") -> ScenePipeline:
        """``compile``: torch.compile of the transformer blocks, ``"auto"`` (CUDA only), True or False."""
        package = IScenePackage.open(spec)
        target = resolve_device(device)
        return cls(ModelSet(package, target, resolve_dtype(target, dtype), compile=compile), cleanup_workers)

    def close(self) -> None:
        self.workers.close()

    def __enter__(self) -> ScenePipeline:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def device(self) -> torch.device:
        return self.models.device

    def conditions(self, slots: SceneSlots, check: Callable[[], None] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene-slot tokens ``[T, C]`` (encoded once) and each instance's own-slot tokens ``[K, N-1, T, C]``;
        ``check()`` (raises to cancel) runs before each DINOv2 block when given."""
        conditioner = self.models.get("image_conditioner")
        names = slots.slot_names()
        own = [slots.instances if name == "scene_space_instance" else slots.canonical
               for name in names if name != "scene_space_scene"]
        with nullcontext() if check is None else cancellation_points(conditioner, check):
            scene = encode_images(conditioner, slots.scene[None], self.device)[0]
            per_instance = torch.stack([encode_images(conditioner, images, self.device) for images in own], dim=1)
        return scene, per_instance

    def stage1(self, scene: SceneInput, request: Stage1Request | None = None,
               progress: ProgressTracker | None = None) -> Stage1Result:
        progress = progress or ProgressTracker(STAGE1_PLAN)
        result = self._stage1(scene, request or Stage1Request(), progress, Timer())
        progress.finish()
        return result

    def _stage1(self, scene: SceneInput, request: Stage1Request, progress: ProgressTracker,
                timer: Timer) -> Stage1Result:
        progress.begin("preprocess")
        slots = build_slots(scene, self.package.exp_setting, request.labels, request.scene_box,
                            progress.check_cancelled)
        timer.lap("preprocess")

        progress.begin("condition")
        scene_cond, instance_cond = self.conditions(slots, progress.check_cancelled)
        timer.lap("condition")

        seeds = [request.seed_for(label) for label in slots.label_ids]
        structure, settings = self.sample_structure(slots.label_ids, scene_cond, instance_cond, request.seed, seeds,
                                                    request, progress, timer)
        return Stage1Result(slots, structure, settings, timer.timings, instance_cond)

    def sample_structure(self, labels: list[int], scene_cond: torch.Tensor, instance_cond: torch.Tensor,
                         scene_seed: int, seeds: list[int], request: Stage1Request, progress: ProgressTracker,
                         timer: Timer, clean: tuple[torch.Tensor, torch.Tensor] | None = None,
                         t_start: float = 1.0) -> tuple[SceneStructure, dict]:
        """Stage 1 of one scene from its condition tokens (see :meth:`Stage1.sample`; ``clean`` and ``t_start``
        start from re-noised latents, for refine), then each instance's occupancy; the progress stages
        ``stage1`` and ``decode``. Returns the structure and the sampler settings used."""
        settings = self.package.sampler("sparse_structure_sampler", steps=request.steps,
                                        cfg_strength=request.cfg_strength)
        _check_steps(settings.steps, "stage-1")
        stage1 = Stage1(self.models.get("denoiser"), self.models.get("sparse_structure_decoder"), settings,
                        self.device)
        progress.begin("stage1", settings.steps)
        scene_latent, latents = stage1.sample(scene_cond, instance_cond, scene_seed, seeds, progress.step,
                                              clean=clean, t_start=t_start)
        timer.lap("stage1")

        progress.begin("decode")
        with cancellation_points(stage1.decoder, progress.check_cancelled):
            structure = stage1.assemble(labels, seeds, scene_seed, scene_latent, latents)
        timer.lap("decode")
        return structure, _describe_settings(settings)

    def generate(self, scene: SceneInput, request: GenerationRequest | None = None,
                 progress: ProgressTracker | None = None) -> SceneResult:
        """The whole scene (or ``request.labels`` of it): occupancy, latents, meshes, Gaussians."""
        request = request or GenerationRequest()
        progress = progress or ProgressTracker(GENERATE_PLAN)
        timer = Timer()
        first = self._stage1(scene, request, progress, timer)
        camera, solving = None, None
        if request.scene_box is None:  # a new frame: fit its camera (regenerations keep their parent's)
            voxels = {i.label: i.coords for i in first.structure.instances}
            solving = self.workers.submit(fit_camera, voxels, scene.ids, first.slots.scene_box)
        try:
            results, settings, frame = self.finish_instances(first.structure.instances,
                                                             first.instance_cond[:, 0], request, progress, timer)
            if solving is not None:
                solved = self.workers.result(solving, "camera solve", progress.check_cancelled)
                camera = solved.value
                timer.add("camera", solved.seconds)
        finally:
            if solving is not None:
                self.workers.cancel([solving])
        progress.finish()
        return SceneResult(first.slots, request.seed, first.structure.scene_latent, results,
                           {"stage1": first.settings, "stage2": settings}, timer.timings, frame, camera,
                           timer.gpu_finished_at)

    def finish_instances(self, instances: list[InstanceStructure], cond: torch.Tensor, request: GenerationRequest,
                         progress: ProgressTracker, timer: Timer) -> tuple[list[InstanceResult], dict, MeshFrame]:
        """Stage 2 and decoding for instances whose occupancy is known; ``cond [K, T, C]`` are their
        scene-space instance slot tokens. Returns the results, the stage-2 settings and the mesh frame."""
        settings = self.package.sampler("slat_sampler", steps=request.slat_steps,
                                        cfg_strength=request.slat_cfg_strength)
        _check_steps(settings.steps, "stage-2")
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
                                         _offset_steps(progress, done)))
        timer.lap("stage2")

        progress.begin("meshes", len(instances))
        decoded, cleaning = [], []
        try:
            for index, inst in enumerate(instances):
                batch = latents[index // STAGE2_BATCH]
                result, raw = self._decode(stage2, batch, index % STAGE2_BATCH, inst, request, progress, timer)
                decoded.append(result)
                timer.gpu_done()  # the last object's stamp stays: the GPU's last work for this job
                if raw is not None:  # clean it up while the GPU decodes the next object
                    task = CleanupTask(inst.label, raw, request.min_floater_fraction, request.target_faces)
                    cleaning.append((index, self.workers.submit(clean_mesh, task)))
                    timer.skip()  # submitting (inline: doing) the clean-up is charged through its worker time
                progress.step(_finished(decoded, cleaning))
            for index, future in cleaning:
                cleaned = self.workers.result(future, f"mesh clean-up of instance {instances[index].label}",
                                              progress.check_cancelled)
                decoded[index].mesh = cleaned.value
                timer.add("mesh_cleanup", cleaned.seconds)
                progress.step(_finished(decoded, cleaning))
        finally:
            self.workers.cancel(future for _, future in cleaning)
        timer.skip()
        return decoded, _describe_settings(settings), stage2.frame

    def _decode(self, stage2: Stage2, latents, index: int, inst: InstanceStructure, request: GenerationRequest,
                progress: ProgressTracker, timer: Timer) -> tuple[InstanceResult, ColoredMesh | None]:
        """The GPU part of one object: its result (mesh still to clean up) and the extracted mesh on the CPU."""
        raw, extracted, gaussians = None, 0, None
        check = progress.check_cancelled
        if "mesh" in request.formats:
            with cancellation_points(stage2.mesh_decoder, check):
                head = stage2.mesh_head(latents, index)
            timer.lap("mesh_decoder")
            check()
            mesh = stage2.extract(head)
            extracted = int(mesh.faces.shape[0])
            if extracted:
                raw = ColoredMesh(mesh.vertices.cpu().numpy(), mesh.faces.cpu().numpy(),
                                  mesh.vertex_attrs[:, :3].cpu().numpy())
            timer.lap("extraction")
            check()
        if "gaussian" in request.formats:
            with cancellation_points(stage2.gaussian_decoder, check):
                params = stage2.decode_gaussians(latents, index)
            gaussians = GaussianCloud(params.xyz.cpu().numpy(), params.features_dc.cpu().numpy(),
                                      params.opacity.cpu().numpy(), params.scaling.cpu().numpy(),
                                      params.rotation.cpu().numpy())
            timer.lap("gaussian_decode")
        return InstanceResult(inst, None, gaussians, extracted), raw


def _finished(decoded: list, cleaning: list) -> int:
    """Objects decoded and cleaned up so far (clean-ups may finish out of order)."""
    return len(decoded) - sum(not future.done() for _, future in cleaning)


def _offset_steps(progress: ProgressTracker, done: int) -> StepCallback:
    """A sampler callback reporting ``done`` earlier steps plus the sampler's own."""
    return lambda step, _total, _t: progress.step(done + step)


def _batches(count: int) -> int:
    return max(1, -(-count // STAGE2_BATCH))


def _check_steps(steps: int, stage: str) -> None:
    if steps < 1:
        raise InputError(f"{stage} steps must be at least 1 (got {steps})", "use 25 for full quality")


def _describe_settings(settings) -> dict:
    return {"steps": settings.steps, "cfg_strength": settings.cfg_strength,
            "cfg_interval": list(settings.cfg_interval), "rescale_t": settings.rescale_t,
            "sigma_min": settings.sigma_min}
