"""One scaled-dot-product attention entry point for every network.

Backends: ``xformers`` (memory-efficient kernels, CUDA only, optional dependency), ``sdpa``
(``torch.nn.functional.scaled_dot_product_attention``) and ``naive`` (explicit softmax, for debugging).
``auto`` picks xformers for CUDA tensors when it is importable, else SDPA. The choice is a process-wide
setting: ``ISCENE_ATTN_BACKEND`` in the environment or :func:`set_attention_backend`.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "xformers", "naive")

_backend = os.environ.get("ISCENE_ATTN_BACKEND", "auto").strip().lower() or "auto"


@functools.lru_cache(maxsize=1)
def _xformers_ops():
    try:
        import xformers.ops as xops
    except Exception:  # xformers missing or built for another torch: fall back silently
        return None
    return xops


def xformers_available() -> bool:
    return _xformers_ops() is not None


def set_attention_backend(name: str) -> None:
    """Select the attention backend for every network in this process."""
    global _backend
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "xformers" and not xformers_available():
        raise ValueError("attention backend 'xformers' was requested but xformers is not installed "
                         "(pip install 'iscene-server[cuda]')")
    _backend = name


def get_attention_backend() -> str:
    return _backend


def resolve_backend(device: torch.device) -> str:
    """The backend that will actually run for tensors on ``device``."""
    if _backend == "auto":
        return "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    if _backend == "xformers" and device.type != "cuda":
        return "sdpa"
    return _backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention with the default 1/sqrt(head_dim) scale, no mask, no dropout.

    ``q`` is ``[B, Lq, H, D]``, ``k`` and ``v`` are ``[B, Lk, H, D]``; the result is ``[B, Lq, H, D]``.
    """
    backend = resolve_backend(q.device)
    if backend == "xformers":
        return _xformers_ops().memory_efficient_attention(q, k, v)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    if backend == "naive":
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        out = scores.softmax(dim=-1) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2)
