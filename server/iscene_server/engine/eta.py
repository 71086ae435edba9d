"""What a job will cost, stage by stage: seconds per unit of work, learned from the last jobs on this device.

A job's size (:class:`JobSize`: kind, instances, steps per stage, formats) gives each stage a number of *units*
(e.g. stage 1: steps x denoised rows; meshes: instances x formats). :class:`StageCosts` holds, per device key
(model package, device, dtype) and job kind, an exponentially weighted mean of the seconds each unit took in the
jobs that finished there; a stage it has never seen costs :data:`DEFAULT_SECONDS_PER_UNIT` (rough release-size
figures for one GPU) until a job has run. The predicted seconds per stage are the plan a
:class:`~iscene_server.engine.progress.ProgressTracker` measures the job against (``predicted=True``).

The costs live in one small JSON file next to the job store, rewritten atomically after every job; a missing or
damaged file means the defaults.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_atomic
from ..errors import StorageError

log = logging.getLogger("iscene.eta")

FORMAT = "iscene-stage-costs/1"
COSTS_FILE = "stage_costs.json"
SCENE_STAGES = ("preprocess", "condition", "stage1", "decode", "camera", "stage2", "meshes", "export")
FALLBACK_KIND = "generate"  # a kind without history of its own starts from these costs
LEARNING_RATE = 0.5  # weight of the newest job in the running mean: the last 2-3 jobs dominate
DEFAULT_STEPS = 25  # the released samplers' steps, when a job does not say

DEFAULT_SECONDS_PER_UNIT = {
    "preprocess": 0.05,  # per instance: masks, crops, Lanczos resizes
    "condition": 0.04,  # per slot image through DINOv2
    "stage1": 0.03,  # per (step x denoised row)
    "decode": 0.05,  # per instance through the SS decoder
    "camera": 0.8,  # per instance in the silhouette fit
    "stage2": 0.04,  # per (step x instance)
    "meshes": 2.5,  # per (instance x format): decoder, extraction, clean-up
    "export": 0.1,  # per instance file
}
UNKNOWN_SECONDS_PER_UNIT = 1.0  # a stage with neither history nor default (a segment job's: units are its plan)


@dataclass(frozen=True)
class JobSize:
    """What a scene job will compute, as far as it is known before it runs."""

    kind: str = "generate"
    instances: int = 1
    stage1_steps: int = DEFAULT_STEPS
    stage2_steps: int = DEFAULT_STEPS
    formats: tuple[str, ...] = ("mesh",)
    camera: bool = True  # a new frame gets its camera fitted; regenerate and refine keep the parent's
    resample: bool = True  # stage 1 runs (a refine at strength 0 only rebuilds moved instances, a build none)
    meshes: bool = True  # stage 2 and the meshes run (a layout job stops after stage 1 and the camera)

    def units(self) -> dict[str, float]:
        """Units of work per stage; a stage the job skips has 0."""
        k = max(1, self.instances)
        return {"preprocess": k, "condition": 1 + k, "stage1": self.stage1_steps * (1 + k) * self.resample,
                "decode": k * self.resample, "camera": k * self.camera, "stage2": self.stage2_steps * k * self.meshes,
                "meshes": k * max(1, len(self.formats)) * self.meshes, "export": k}


def device_key(model: str, device: str, dtype: str) -> str:
    """The key costs are kept under: the same package on the same device in the same precision."""
    return f"{model}|{device}|{dtype}"


class StageCosts:
    """Seconds per unit of each stage, per device key and job kind; persisted in ``path`` (JSON)."""

    def __init__(self, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._costs: dict[str, dict[str, dict[str, dict]]] = self._load()

    def _load(self) -> dict:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            return {key: {kind: {stage: {"seconds_per_unit": float(entry["seconds_per_unit"]),
                                         "jobs": int(entry["jobs"])}
                                 for stage, entry in stages.items() if _usable(entry)}
                          for kind, stages in kinds.items()}
                    for key, kinds in data["devices"].items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring the stage costs in %s (%s); ETAs start from the defaults", self.path, exc)
            return {}

    def seconds_per_unit(self, key: str, kind: str, stage: str) -> float:
        with self._lock:
            kinds = self._costs.get(key, {})
            for source in (kind, FALLBACK_KIND):
                entry = kinds.get(source, {}).get(stage)
                if entry is not None:
                    return entry["seconds_per_unit"]
        return DEFAULT_SECONDS_PER_UNIT.get(stage, UNKNOWN_SECONDS_PER_UNIT)

    def predict(self, key: str, kind: str, units: Mapping[str, float]) -> dict[str, float]:
        """Predicted seconds per stage, in the order of ``units`` (the order the stages run in)."""
        return {stage: float(count) * self.seconds_per_unit(key, kind, stage) for stage, count in units.items()}

    def learn(self, key: str, kind: str, units: Mapping[str, float], seconds: Mapping[str, float]) -> None:
        """Fold one job's measured ``seconds`` per stage into the running means (stages without units or without
        a measurement are left as they are), then save."""
        usable = {stage: duration for stage, duration in seconds.items()
                  if units.get(stage, 0) > 0 and math.isfinite(duration) and duration >= 0}
        if not usable:
            return
        with self._lock:
            stages = self._costs.setdefault(key, {}).setdefault(kind, {})
            for stage, duration in usable.items():
                count = units[stage]
                observed = duration / count
                entry = stages.get(stage)
                if entry is None:
                    stages[stage] = {"seconds_per_unit": observed, "jobs": 1}
                else:
                    entry["seconds_per_unit"] += LEARNING_RATE * (observed - entry["seconds_per_unit"])
                    entry["jobs"] += 1
            snapshot = json.dumps({"format": FORMAT, "devices": self._costs}, indent=2)
        self._save(snapshot)

    def _save(self, text: str) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, text.encode())
        except (OSError, StorageError) as exc:  # a full or read-only disk must not fail the job that just finished
            log.warning("could not save the stage costs to %s: %s", self.path, exc)


def _usable(entry) -> bool:
    try:
        value = float(entry["seconds_per_unit"])
        return math.isfinite(value) and value >= 0 and int(entry["jobs"]) >= 1
    except (TypeError, ValueError, KeyError):
        return False


def default_plan(size: JobSize) -> dict[str, float]:
    """Predicted seconds per stage from the defaults alone (no history)."""
    return StageCosts().predict("", size.kind, size.units())


TYPICAL_JOB = JobSize(instances=4)


def relative_plan(stages) -> dict[str, float]:
    """The default costs of ``stages`` in a typical job: the plan of a tracker that has no prediction."""
    plan = default_plan(TYPICAL_JOB)
    return {stage: plan[stage] for stage in stages}


STAGE1_PLAN = relative_plan(("preprocess", "condition", "stage1", "decode"))
LAYOUT_PLAN = relative_plan(("preprocess", "condition", "stage1", "decode", "camera"))
BUILD_PLAN = relative_plan(("preprocess", "condition", "stage2", "meshes"))
GENERATE_PLAN = relative_plan(("preprocess", "condition", "stage1", "decode", "camera", "stage2", "meshes"))
