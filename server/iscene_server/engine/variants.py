"""Variants: K candidate shapes of one instance, made in one pass through stage 1 and one through stage 2.

The K candidates are K instances of the same label: the label's own condition tokens repeated K times, each
with its own seed, in the given frame with the given scene seed (a variants job passes its parent's). No
instance attends to another in stage 1 (each one's rows see only its own slots and the shared scene row) and
stage 2 samples each batch item on its own voxels with its own noise, so candidate k is what regenerating the
label with candidate k's seed makes — K shapes for the price of one sampling pass per stage (K <= the stage-2
batch) instead of K regenerations. "Is" up to float rounding: the batched pass sums in another order than a
one-object pass (stage-1 occupancy comes out equal, extracted vertices within ~1e-7), and mesh decimation may
turn such a difference into other collapses (tests/test_variants.py says how reproducibility is checked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InputError
from .listener import ResultListener
from .pipeline import STAGE2_BATCH, GenerationRequest, InstanceResult, ScenePipeline
from .preprocess import SceneInput, SceneSlots, build_slots
from .progress import ProgressTracker
from .seeds import SEED_LIMIT, random_seed
from .stage1 import InstanceStructure
from .stage2 import MeshFrame
from .timing import Timer

MAX_VARIANTS = STAGE2_BATCH  # candidates of one job: all of them go through stage 2 in one batch

CandidateCallback = Callable[[int, InstanceResult], None]
"""Called with ``(index, result)`` as soon as candidate ``index`` (1-based) is final."""


@dataclass
class VariantsResult:
    slots: SceneSlots  # of the one label
    label: int
    scene_seed: int
    candidates: list[InstanceResult]  # candidate k (1-based) at position k - 1
    settings: dict  # {"stage1": ..., "stage2": ...} sampler settings
    timings: dict[str, float]
    mesh_frame: MeshFrame


def check_variant_count(count: int) -> None:
    """1 to :data:`MAX_VARIANTS` candidates, else :class:`InputError`."""
    if not 1 <= count <= MAX_VARIANTS:
        raise InputError(f"{count} variants asked for", f"ask for 1 to {MAX_VARIANTS} variants")


def check_variant_seeds(seeds: list[int]) -> None:
    """1 to :data:`MAX_VARIANTS` distinct seeds in ``[0, SEED_LIMIT)``, else :class:`InputError`."""
    check_variant_count(len(seeds))
    if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < SEED_LIMIT for s in seeds):
        raise InputError(f"variant seeds {seeds} are not all integers in [0, {SEED_LIMIT})",
                         f"give integer seeds from 0 to {SEED_LIMIT - 1}")
    if len(set(seeds)) != len(seeds):
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        raise InputError(f"variant seed(s) {', '.join(map(str, repeated))} given more than once",
                         "give each candidate its own seed (equal seeds make equal shapes)")


def random_variant_seeds(count: int) -> list[int]:
    """``count`` distinct random seeds."""
    seeds: list[int] = []
    while len(seeds) < count:
        seed = random_seed()
        if seed not in seeds:
            seeds.append(seed)
    return seeds


class _CandidateListener(ResultListener):
    """Turns the pipeline's per-instance notices into per-candidate ones: all candidates share one label, so a
    candidate is known by its structure (the object the pipeline passes through), not by its label."""

    def __init__(self, structures: list[InstanceStructure], on_candidate: CandidateCallback):
        self.indices = {id(structure): index for index, structure in enumerate(structures, 1)}
        self.on_candidate = on_candidate

    def instance(self, result: InstanceResult) -> None:
        self.on_candidate(self.indices[id(result.structure)], result)


def generate_variants(pipeline: ScenePipeline, scene: SceneInput, label: int, seeds: list[int],
                      request: GenerationRequest, progress: ProgressTracker,
                      on_candidate: CandidateCallback | None = None) -> VariantsResult:
    """Candidates of instance ``label`` of ``scene``, one per seed, in ``request.scene_box`` with scene seed
    ``request.seed`` (``request.labels`` and ``request.seeds`` are not read); ``on_candidate`` hears of each as it
    is final (in any order). Progress stages: preprocess, condition, stage1, decode, stage2, meshes."""
    check_variant_seeds(seeds)
    timer = Timer()
    progress.begin("preprocess")
    slots = build_slots(scene, pipeline.package.exp_setting, [label], request.scene_box, progress.check_cancelled)
    timer.lap("preprocess")

    progress.begin("condition")
    scene_cond, own_cond = pipeline.conditions(slots, progress.check_cancelled)  # [T, C], [1, N-1, T, C]
    timer.lap("condition")
    repeated = own_cond.expand(len(seeds), *own_cond.shape[1:])  # [K, N-1, T, C]: one row per candidate

    structure, stage1_settings = pipeline.sample_structure([label] * len(seeds), scene_cond, repeated, request.seed,
                                                           seeds, request, progress, timer)
    listener = None if on_candidate is None else _CandidateListener(structure.instances, on_candidate)
    results, stage2_settings, frame = pipeline.finish_instances(structure.instances, repeated[:, 0], request,
                                                                progress, timer, listener=listener)
    progress.finish()
    return VariantsResult(slots, int(label), request.seed, results,
                          {"stage1": stage1_settings, "stage2": stage2_settings}, timer.timings, frame)

