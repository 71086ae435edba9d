"""The elementwise work of the transformer blocks as pure functions, and ``torch.compile`` of them.

Between the GEMMs and attention kernels a block spends its memory traffic on float32 norm round-trips, the
adaLN modulation ``norm(x) * (1 + scale) + shift``, gates and residuals — each a separate full pass over the
activations in eager PyTorch. The functions below group that work around the GEMMs so that a compiler fuses
each into one kernel (a GEMM's bias, GELU, gate and residual into its epilogue). They take plain tensors and
contain no data-dependent Python, so they capture as whole graphs for dense rows and sparse rows alike; a sparse
block passes its per-item modulation ``[B, C]`` with ``rows [N]`` (the batch item of every row), and the
gather fuses into the same kernel instead of materialising ``[N, 6C]``.

Modules that call them derive from :class:`UsesFusedFunctions` and call ``self.fused.<name>``: eager by
default, compiled for one network by :func:`compile_network` (the model set does that on CUDA). A compile
failure logs one warning and every compiled function runs eagerly from then on; it never fails a job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

COMPILE_OPTIONS = ("auto", True, False)


def _per_row(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return t if rows is None else t[rows]


def modulated_norm(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor | None,
                   rows: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Non-affine LayerNorm in float32, back to ``x``'s dtype, then ``* (1 + scale) + shift`` (when given)."""
    h = F.layer_norm(x.float(), x.shape[-1:], None, None, eps).type(x.dtype)
    if scale is None:
        return h
    return h * (1 + _per_row(scale, rows)) + _per_row(shift, rows)


def gated_residual_norm(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, rows: torch.Tensor | None,
                        weight: torch.Tensor | None, bias: torch.Tensor | None,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual ``x + y * gate`` and its float32 LayerNorm (affine when ``weight`` is given)."""
    x = x + (y if gate is None else y * _per_row(gate, rows))
    return x, F.layer_norm(x.float(), x.shape[-1:], weight, bias, eps).type(x.dtype)


def residual_modulated_norm(x: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                            rows: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual ``x + y`` and its modulated norm."""
    x = x + y
    return x, modulated_norm(x, shift, scale, rows, eps)


def gated_feed_forward(x: torch.Tensor, h: torch.Tensor, gate: torch.Tensor | None, rows: torch.Tensor | None,
                       w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """``x + mlp(h) * gate`` with the MLP Linear -> tanh-GELU -> Linear."""
    y = F.linear(F.gelu(F.linear(h, w1, b1), approximate="tanh"), w2, b2)
    return x + (y if gate is None else y * _per_row(gate, rows))


def head_rms_norm(x: torch.Tensor, gamma: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-head RMS norm ``x / ||x|| * gamma * scale`` in float32, back to ``x``'s dtype."""
    return (F.normalize(x.float(), dim=-1) * gamma * scale).to(x.dtype)


FUNCTIONS: dict[str, Callable] = {f.__name__: f for f in (modulated_norm, gated_residual_norm,
                                                          residual_modulated_norm, gated_feed_forward,
                                                          head_rms_norm)}


class FusedFunctions:
    """One implementation of every function in :data:`FUNCTIONS`, as attributes."""

    def __init__(self, implementations: dict[str, Callable]):
        for name, fn in implementations.items():
            setattr(self, name, fn)


EAGER = FusedFunctions(FUNCTIONS)


class CompiledFunctions(FusedFunctions):
    """:data:`FUNCTIONS` through ``torch.compile(fullgraph=True)``, falling back to eager for good on the
    first failure (one warning for the whole set)."""

    def __init__(self, backend: str = "inductor", dynamic: bool | None = None):
        self.failed = False
        self._lock = threading.Lock()
        self._compiled = {name: torch.compile(fn, backend=backend, fullgraph=True, dynamic=dynamic)
                          for name, fn in FUNCTIONS.items()}
        super().__init__({name: self._guarded(name) for name in FUNCTIONS})

    def _guarded(self, name: str) -> Callable:
        compiled, eager = self._compiled[name], FUNCTIONS[name]

        def call(*args):
            if not self.failed:
                try:
                    return compiled(*args)
                except torch.OutOfMemoryError:
                    raise
                except Exception as exc:  # any compiler/backend failure: eager is always correct
                    self._give_up(name, exc)
            return eager(*args)

        call.__name__ = name
        return call

    def _give_up(self, name: str, exc: Exception) -> None:
        with self._lock:
            if not self.failed:
                self.failed = True
                log.warning("torch.compile of the transformer functions failed in %s (%s: %s); running them "
                            "eagerly (start with --no-compile to skip compiling)", name, type(exc).__name__,
                            str(exc).splitlines()[0] if str(exc) else "")


class UsesFusedFunctions:
    """Mixin for modules whose elementwise work goes through ``self.fused`` (eager unless compiled)."""

    fused: FusedFunctions = EAGER


def should_compile(option: str | bool, device: torch.device) -> bool:
    """``"auto"`` compiles on CUDA only; ``True`` / ``False`` force it on or off."""
    if option not in COMPILE_OPTIONS:
        raise ValueError(f"compile must be 'auto', True or False, not {option!r}")
    return device.type == "cuda" if option == "auto" else bool(option)


_shared: dict[tuple[str, bool | None], CompiledFunctions] = {}
_shared_lock = threading.Lock()


def compiled_functions(backend: str = "inductor", dynamic: bool | None = None) -> CompiledFunctions:
    """One compiled set per backend, shared by every network (so they share compiled graphs)."""
    with _shared_lock:
        if (backend, dynamic) not in _shared:
            _shared[(backend, dynamic)] = CompiledFunctions(backend, dynamic)
        return _shared[(backend, dynamic)]


def compile_network(net: nn.Module, functions: FusedFunctions | None = None) -> int:
    """Route the fused functions of every block of ``net`` through ``functions`` (default: the compiled
    inductor set); returns how many modules were switched."""
    functions = functions if functions is not None else compiled_functions()
    count = 0
    for module in net.modules():
        if isinstance(module, UsesFusedFunctions):
            module.fused = functions
            count += 1
    return count
