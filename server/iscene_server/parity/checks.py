"""Comparing our outputs with reference outputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NETWORK_TOL = 1e-4
SAMPLER_TOL = 5e-4


@dataclass
class Check:
    """One output compared: passes when ``|ours - ref| <= atol + rtol |ref|`` everywhere (exact for integers),
    or, with ``scale_tol`` (half-precision runs), when ``max |ours - ref| <= scale_tol * max |ref|``."""

    name: str
    ours: np.ndarray
    reference: np.ndarray
    atol: float = NETWORK_TOL
    rtol: float = NETWORK_TOL
    error: str = ""
    scale_tol: float | None = None

    def __post_init__(self):
        self.ours = _numpy(self.ours)
        self.reference = _numpy(self.reference)
        if self.ours.shape != self.reference.shape:
            self.error = f"shape {list(self.ours.shape)} != reference {list(self.reference.shape)}"

    @property
    def exact(self) -> bool:
        return not np.issubdtype(self.reference.dtype, np.floating)

    @property
    def max_abs(self) -> float:
        if self.error or self.reference.size == 0:
            return 0.0 if not self.error else float("inf")
        return float(np.max(np.abs(self.ours.astype(np.float64) - self.reference.astype(np.float64))))

    @property
    def max_rel(self) -> float:
        """The largest difference relative to the reference's largest magnitude."""
        scale = float(np.max(np.abs(self.reference))) if self.reference.size else 0.0
        return self.max_abs / scale if scale > 0 else self.max_abs

    @property
    def passed(self) -> bool:
        if self.error:
            return False
        if self.exact:
            return bool(np.array_equal(self.ours, self.reference))
        if self.scale_tol is not None:
            return self.max_rel <= self.scale_tol
        return bool(np.allclose(self.ours, self.reference, atol=self.atol, rtol=self.rtol))


def _numpy(x) -> np.ndarray:
    """A tensor on any device as a CPU array, compared in float32 (float64 stays float64; numpy has no
    bfloat16)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.is_floating_point() and x.dtype != torch.float64:
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)
