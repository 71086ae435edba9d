"""The I-Scene scene pipeline: image + label map -> per-instance results.

Stages: preprocess (slot images) -> condition (DINOv2 tokens) -> stage 1 (sparse structure) ->
stage 2 (structured latents) -> meshes (decode, FlexiCubes, clean-up) and optional Gaussians.

The CPU work overlaps the GPU (engine/cleanup.py): the camera solve runs in a worker process while stage 2
samples, and each object's mesh clean-up while the GPU decodes the next object, so the GPU never waits on the
CPU and only the last object's clean-up is left once the GPU is done.

Results are announced as they become final (:mod:`.announcing`, to a :class:`~.listener.ResultListener`): the
layout once stage 1 and the camera solve are done, while stage 2 runs; then each object once its mesh is
cleaned up, in the order the clean-ups finish.
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
from ..geometry.texture.settings import DEFAULT_TEXTURE_SIZE, MAX_TEXTURE_SIZE, MIN_TEXTURE_SIZE, TEXTURES
from .announcing import FinalInstances, LayoutAnnouncer
from .camera.solve import CameraFit
from .cancel import cancellation_points
from .cleanup import CleanupPool, CleanupTask, clean_mesh
from .conditioning import encode_images
from .eta import BUILD_PLAN, GENERATE_PLAN, LAYOUT_PLAN, STAGE1_PLAN
from .listener import ResultListener
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
    texture: str = "baked"
    texture_size: int = DEFAULT_TEXTURE_SIZE
    vertex_colors: bool | None = None  # COLOR_0 in the GLBs; None: only with texture "vertex" (it multiplies a texture)

    def __post_init__(self):
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise InputError(f"unknown output format(s) {', '.join(unknown) or '(none given)'}",
                             f"choose from {', '.join(FORMATS)}")
        if self.target_faces < 100:
            raise InputError(f"target face count {self.target_faces} is too small", "use at least 100 faces")
        if self.texture not in TEXTURES:
            raise InputError(f"unknown texture {self.texture!r}", f"choose from {', '.join(TEXTURES)}")
        if not MIN_TEXTURE_SIZE <= self.texture_size <= MAX_TEXTURE_SIZE:
            raise InputError(f"texture size {self.texture_size} is out of range",
                             f"use {MIN_TEXTURE_SIZE} to {MAX_TEXTURE_SIZE} texels (default {DEFAULT_TEXTURE_SIZE})")
        if self.texture == "vertex" and self.vertex_colors is False:
            raise InputError("texture \"vertex\" with vertex colours off leaves the objects without colour",
                             "keep vertex colours (leave vertex_colors unset), or use texture \"baked\"")

    @property
    def keeps_vertex_colors(self) -> bool:
        """Whether the GLBs carry ``COLOR_0``: as asked, else only when they have no texture to multiply."""
        return self.texture == "vertex" if self.vertex_colors is None else self.vertex_colors

    @property
    def baked_texture_size(self) -> int | None:
        """Texels per side of the texture to bake, or None for vertex colours only."""
        return self.texture_size if self.texture == "baked" else None


@dataclass
class InstanceResult:
    structure: InstanceStructure
    mesh: ColoredMesh | None
    gaussians: GaussianCloud | None
    extracted_faces: int  # before clean-up and decimation
    vertex_colors: bool = False  # its GLB keeps COLOR_0 next to a baked texture (GenerationRequest.keeps_vertex_colors)

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
    instance_cond: torch.Tensor | None  # [K, N-1, T, C] tokens of each instance's own slots; None: not encoded


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

    def layout(self, scene: SceneInput, request: Stage1Request | None = None,
               progress: ProgressTracker | None = None) -> tuple[Stage1Result, CameraFit | None]:
        """Stage 1 and, for a new frame (``request.scene_box`` None), the camera solve: a layout, no meshes."""
        request = request or Stage1Request()
        progress = progress or ProgressTracker(LAYOUT_PLAN)
        timer = Timer()
        first = self._stage1(scene, request, progress, timer)
        announcer = LayoutAnnouncer(self.workers, first, scene, request, progress, timer)
        progress.begin("camera")
        try:
            announcer.wait()
        finally:
            announcer.close()
        progress.finish()
        return first, announcer.camera

    def generate(self, scene: SceneInput, request: GenerationRequest | None = None,
                 progress: ProgressTracker | None = None, listener: ResultListener | None = None) -> SceneResult:
        """The whole scene (or ``request.labels`` of it): occupancy, latents, meshes, Gaussians. ``listener``
        hears the layout once stage 1 and the camera solve (which runs while stage 2 samples) are done, then
        each instance as it becomes final."""
        request = request or GenerationRequest()
        progress = progress or ProgressTracker(GENERATE_PLAN)
        timer = Timer()
        first = self._stage1(scene, request, progress, timer)
        announcer = LayoutAnnouncer(self.workers, first, scene, request, progress, timer, listener)
        try:
            announcer.poll()
            results, settings, frame = self.finish_instances(first.structure.instances,
                                                             first.instance_cond[:, 0], request, progress, timer,
                                                             announcer.after_layout(), on_step=announcer.poll)
            announcer.wait()
        finally:
            announcer.close()
        progress.finish()
        return SceneResult(first.slots, request.seed, first.structure.scene_latent, results,
                           {"stage1": first.settings, "stage2": settings}, timer.timings, frame, announcer.camera,
                           timer.gpu_finished_at)

    def build(self, scene: SceneInput, layout: SceneStructure, stage1_settings: dict, request: GenerationRequest,
              progress: ProgressTracker | None = None, listener: ResultListener | None = None) -> SceneResult:
        """The meshes of a layout made earlier (a layout job's occupancies and seeds, in its frame
        ``request.scene_box``) without stage 1: the same results as :meth:`generate` of that scene and seed.
        ``listener`` hears the layout at once, then each instance as it becomes final."""
        progress = progress or ProgressTracker(BUILD_PLAN)
        listener = listener or ResultListener()
        timer = Timer()
        by_label = {i.label: i for i in layout.instances}
        progress.begin("preprocess")
        slots = build_slots(scene, self.package.exp_setting, sorted(by_label), request.scene_box,
                            progress.check_cancelled)
        timer.lap("preprocess")
        progress.begin("condition")
        _, instance_cond = self.conditions(slots, progress.check_cancelled)
        timer.lap("condition")
        instances = [by_label[label] for label in slots.label_ids]  # the order generate samples them in
        first = Stage1Result(slots, SceneStructure(layout.scene_seed, layout.scene_latent, instances),
                             stage1_settings, timer.timings, instance_cond)
        listener.layout(first, None)
        results, settings, frame = self.finish_instances(instances, instance_cond[:, 0], request, progress, timer,
                                                         listener)
        progress.finish()
        return SceneResult(slots, layout.scene_seed, layout.scene_latent, results,
                           {"stage1": stage1_settings, "stage2": settings}, timer.timings, frame, None,
                           timer.gpu_finished_at)

    def finish_instances(self, instances: list[InstanceStructure], cond: torch.Tensor, request: GenerationRequest,
                         progress: ProgressTracker, timer: Timer, listener: ResultListener | None = None,
                         on_step: Callable[[], None] | None = None
                         ) -> tuple[list[InstanceResult], dict, MeshFrame]:
        """Stage 2 and decoding for instances whose occupancy is known; ``cond [K, T, C]`` are their
        scene-space instance slot tokens. Returns the results, the stage-2 settings and the mesh frame.
        ``listener.instance`` hears each instance as soon as it is final (clean-ups finish in any order);
        ``on_step()`` runs after every stage-2 sampling step."""
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
                                         _offset_steps(progress, done, on_step)))
        timer.lap("stage2")

        progress.begin("meshes", len(instances))
        finals = FinalInstances(self.workers, listener or ResultListener(), progress, timer)
        try:
            for index, inst in enumerate(instances):
                batch = latents[index // STAGE2_BATCH]
                result, raw = self._decode(stage2, batch, index % STAGE2_BATCH, inst, request, progress, timer)
                timer.gpu_done()  # the last object's stamp stays: the GPU's last work for this job
                cleaning = None
                if raw is not None:  # clean it up while the GPU decodes the next object
                    task = CleanupTask(inst.label, raw, request.min_floater_fraction, request.target_faces,
                                       request.baked_texture_size)
                    cleaning = self.workers.submit(clean_mesh, task)
                    timer.skip()  # submitting (inline: doing) the clean-up is charged through its worker time
                finals.add(result, cleaning)
                finals.publish(wait=False)
            finals.publish(wait=True)
        finally:
            finals.close()
        timer.skip()
        return finals.results, _describe_settings(settings), stage2.frame

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
        return InstanceResult(inst, None, gaussians, extracted, request.keeps_vertex_colors), raw


def _offset_steps(progress: ProgressTracker, done: int, on_step: Callable[[], None] | None = None) -> StepCallback:
    """A sampler callback reporting ``done`` earlier steps plus the sampler's own, then calling ``on_step()``."""
    def report(step: int, _total: int, _t: float) -> None:
        progress.step(done + step)
        if on_step is not None:
            on_step()
    return report


def _batches(count: int) -> int:
    return max(1, -(-count // STAGE2_BATCH))


def _check_steps(steps: int, stage: str) -> None:
    if steps < 1:
        raise InputError(f"{stage} steps must be at least 1 (got {steps})", "use 25 for full quality")


def _describe_settings(settings) -> dict:
    return {"steps": settings.steps, "cfg_strength": settings.cfg_strength,
            "cfg_interval": list(settings.cfg_interval), "rescale_t": settings.rescale_t,
            "sigma_min": settings.sigma_min}
