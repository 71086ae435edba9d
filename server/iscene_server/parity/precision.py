"""Where the parity networks run (device, torso dtype) and the tolerances that follow from the dtype.

float32 keeps the reference's own tolerances (:data:`~.checks.NETWORK_TOL`, :data:`~.checks.SAMPLER_TOL`,
element-wise ``atol + rtol |ref|``). A half-precision run puts every network's torso in that dtype exactly as
the engine runs it on CUDA (:meth:`~iscene_server.nn.precision.TorsoPrecision.set_torso_dtype`: the Linear/Conv
layers of the blocks in half precision, norms, embedders, heads and the residual stream in float32) and compares
in float32 against the float32 reference. Element-wise relative error is meaningless there (outputs near zero
have no relative precision after cancellation), so a half-precision check passes when the largest difference is
within ``tol`` of the reference's largest magnitude: ``max |ours - ref| <= tol * max |ref|``.

Where ``tol`` comes from: a half-precision Linear rounds its input and weights to the dtype (relative error
``u`` each; ``u = 2^-11`` for float16, ``2^-8`` for bfloat16) and accumulates in float32, so each layer adds an
error of a few ``u`` relative to the activations' scale, roughly independent of its width (rounding errors of a
length-``n`` dot product with random signs grow like ``sqrt(n)`` and so does the product itself). The errors of
``L`` sequential torso layers add up like a random walk, and the float32 residual stream keeps them from
compounding, so the output error is about ``c u sqrt(L)`` with ``c`` of order 1-4. The parity networks have
up to 6 blocks of ~4 torso layers (``L`` ~ 24, ``sqrt(L)`` ~ 5), the release's networks 24 blocks (~10). We allow
``tol = 16 u``: 7.8e-3 for float16, 6.3e-2 for bfloat16. Measured on the CPU (``iscene-server parity --device
cpu --dtype bfloat16|float16``, every vector) the networks stay within 3.5 u (bfloat16: max 1.4e-2, SS decoder;
float16: max 1.6e-3), so the tolerance leaves a factor 4 for deeper networks and other kernels, and is still far
below what a wrong layer, a missing cast or a swapped weight produces (differences of the outputs' own size).
The samplers integrate 5 Euler steps with guidance ``(1 + s) v - s v_neg`` (s = 3: the difference amplifies
each step's error up to ``2s + 1`` = 7 times, partly cancelling): ``32 u`` there (measured: within 9 u).

FlexiCubes runs in float32 whatever the dtype (the engine casts the head output to float32 first) and is fed
the reference's own head output, so its checks keep the float32 tolerances; integer outputs stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..nn.compile import compile_network
from ..nn.precision import TorsoPrecision
from .checks import SAMPLER_TOL, Check

UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
NETWORK_ROUNDOFFS = 16  # half-precision network tolerance in units of the dtype's unit roundoff
SAMPLER_ROUNDOFFS = 32  # ... and for 5 guided Euler steps


@dataclass(frozen=True)
class Precision:
    """The device and torso dtype a parity run uses; ``compiled``: the transformer blocks' fused functions
    through ``torch.compile``, as the engine runs them on CUDA."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    compiled: bool = False

    def __post_init__(self):
        if self.dtype != torch.float32 and self.dtype not in UNIT_ROUNDOFF:
            raise ValueError(f"parity runs in float32, float16 or bfloat16, not {self.dtype}")

    @property
    def half(self) -> bool:
        return self.dtype in UNIT_ROUNDOFF

    def describe(self) -> str:
        return f"{self.device.type} {str(self.dtype).removeprefix('torch.')}{', compiled' if self.compiled else ''}"

    def tolerance(self, sampler: bool = False) -> float:
        """The scale-relative tolerance of a half-precision run (see the module docstring)."""
        return UNIT_ROUNDOFF[self.dtype] * (SAMPLER_ROUNDOFFS if sampler else NETWORK_ROUNDOFFS)

    def configure(self) -> None:
        """float32 on CUDA means float32: no TF32 in matmuls or cuDNN convolutions."""
        if self.device.type == "cuda" and not self.half:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, its torso in this run's dtype (as the engine runs the release)."""
        if self.half and isinstance(model, TorsoPrecision):
            model.set_torso_dtype(self.dtype)
        if self.compiled:
            compile_network(model)
        return model.to(self.device).eval()

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device)

    def network(self, name: str, ours, reference) -> Check:
        """A network output's check at this run's tolerance."""
        if not self.half:
            return Check(name, ours, reference)
        return Check(name, ours, reference, scale_tol=self.tolerance())

    def sampler(self, name: str, ours, reference) -> Check:
        """A sampler trajectory's check at this run's tolerance."""
        if not self.half:
            return Check(name, ours, reference, atol=SAMPLER_TOL, rtol=SAMPLER_TOL)
        return Check(name, ours, reference, scale_tol=self.tolerance(sampler=True))

