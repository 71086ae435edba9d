"""Flow-matching Euler samplers (TRELLIS ``FlowEuler*Sampler``), spec §4.

Convention: ``x_t = (1 - t) x_0 + (sigma_min + (1 - sigma_min) t) eps``; the network predicts
``v = (1 - sigma_min) eps - x_0`` and is called with ``1000 t``. Samplers know nothing of the network
except that it is a callable ``model(x, t_model, cond) -> v``; a model that also has
``paired(x, t_model, cond, neg_cond) -> (v, v_neg)`` (:class:`PairedDenoiser`) makes both guidance passes in
one batched call. The unconditional condition is best passed as ``ConditionRows.zeros_like(cond)``
(``iscene_server.nn.condition``): the networks then skip its cross-attention, whose output is a constant.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

StepCallback = Callable[[int, int, float], None]
"""Called after every step with (steps done, total steps, time reached); may raise to stop sampling."""


def time_schedule(steps: int, rescale_t: float = 1.0, t_start: float = 1.0) -> list[float]:
    """``steps + 1`` times from ``t_start`` to 0: ``t = r s / (1 + (r - 1) s)`` over a uniform ``s`` grid.

    ``t_start < 1`` (partial re-noising, used by refine) starts the uniform grid at the ``s`` that maps to
    ``t_start``, so ``t_start = 1`` reproduces the reference schedule exactly.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if not 0.0 < t_start <= 1.0:
        raise ValueError("t_start must be in (0, 1]")
    r = rescale_t
    s_start = 1.0 if t_start == 1.0 else t_start / (r - (r - 1.0) * t_start)
    s = np.linspace(s_start, 0, steps + 1)
    return [float(v) for v in r * s / (1 + (r - 1) * s)]


def renoise(x0: torch.Tensor, noise: torch.Tensor, t: float, sigma_min: float = 1e-5) -> torch.Tensor:
    """The point at time ``t`` on the straight path from clean ``x0`` to ``noise``."""
    return (1 - t) * x0 + (sigma_min + (1 - sigma_min) * t) * noise


@runtime_checkable
class PairedDenoiser(Protocol):
    """A denoiser that computes the conditional and unconditional velocities in one call."""

    def __call__(self, x, t, cond): ...

    def paired(self, x, t, cond, neg_cond): ...


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance ``v = (1 + s) v(cond) - s v(neg_cond)``, applied while ``lo <= t <= hi``."""

    strength: float = 0.0
    interval: tuple[float, float] = (0.0, 1.0)

    def active_at(self, t: float) -> bool:
        return self.strength != 0 and self.interval[0] <= t <= self.interval[1]


NO_GUIDANCE = Guidance()  # frozen, so one shared instance is a safe default


@dataclass
class SampleResult:
    samples: torch.Tensor
    pred_x_t: list[torch.Tensor] = field(default_factory=list)
    pred_x_0: list[torch.Tensor] = field(default_factory=list)


class FlowEulerSampler:
    """Euler integration of the flow ODE from ``t_start`` down to 0, with optional guidance."""

    def __init__(self, sigma_min: float = 1e-5):
        self.sigma_min = sigma_min

    def velocity(self, model, x: torch.Tensor, t: float, cond, neg_cond, guidance: Guidance) -> torch.Tensor:
        t_model = torch.full((x.shape[0],), 1000 * t, dtype=torch.float32, device=x.device)
        if not guidance.active_at(t):
            return model(x, t_model, cond)
        if isinstance(model, PairedDenoiser):
            v, v_neg = model.paired(x, t_model, cond, neg_cond)
        else:
            v, v_neg = model(x, t_model, cond), model(x, t_model, neg_cond)
        return (1 + guidance.strength) * v - guidance.strength * v_neg

    def predict_x0(self, x: torch.Tensor, t: float, v: torch.Tensor) -> torch.Tensor:
        return (1 - self.sigma_min) * x - (self.sigma_min + (1 - self.sigma_min) * t) * v

    @torch.no_grad()
    def sample(self, model, noise: torch.Tensor, cond, neg_cond=None, *, steps: int, rescale_t: float = 1.0,
               guidance: Guidance = NO_GUIDANCE, t_start: float = 1.0, callback: StepCallback | None = None,
               return_trajectory: bool = False) -> SampleResult:
        """Integrate from ``noise`` (the state at ``t_start``) to a sample.

        ``cond``/``neg_cond`` are passed to ``model`` unchanged; ``neg_cond`` is needed only when guidance
        is active at some step.
        """
        times = time_schedule(steps, rescale_t, t_start)
        result = SampleResult(noise)
        x = noise
        for i, (t, t_prev) in enumerate(itertools.pairwise(times)):
            v = self.velocity(model, x, t, cond, neg_cond, guidance)
            if return_trajectory:
                result.pred_x_0.append(self.predict_x0(x, t, v))
            x = x - (t - t_prev) * v
            if return_trajectory:
                result.pred_x_t.append(x)
            if callback is not None:
                callback(i + 1, steps, t_prev)
        result.samples = x
        return result


@dataclass(frozen=True)
class SamplerSettings:
    """Sampler parameters as released in ``pipeline.json`` (``args`` + ``params``)."""

    steps: int = 25
    cfg_strength: float = 3.0
    cfg_interval: tuple[float, float] = (0.5, 1.0)
    rescale_t: float = 3.0
    sigma_min: float = 1e-5

    @classmethod
    def from_pipeline_json(cls, entry: Mapping, **overrides) -> SamplerSettings:
        """Read a ``{name, args, params}`` sampler entry; only the guidance-interval Euler sampler exists."""
        name = entry.get("name", "FlowEulerGuidanceIntervalSampler")
        params = {**entry.get("params", {}), **{k: v for k, v in overrides.items() if v is not None}}
        interval = tuple(params.get("cfg_interval", (0.0, 1.0))) if name.endswith("GuidanceIntervalSampler") \
            else (0.0, 1.0)
        if not name.startswith("FlowEuler"):
            raise ValueError(f"unsupported sampler {name!r}")
        return cls(steps=int(params.get("steps", cls.steps)),
                   cfg_strength=float(params.get("cfg_strength", 0.0 if name == "FlowEulerSampler" else 3.0)),
                   cfg_interval=interval, rescale_t=float(params.get("rescale_t", 1.0)),
                   sigma_min=float(entry.get("args", {}).get("sigma_min", 1e-5)))

    @property
    def guidance(self) -> Guidance:
        return Guidance(self.cfg_strength, self.cfg_interval)
