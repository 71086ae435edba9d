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
    """The ``xformers.ops`` module, or None where xformers is missing or unusable."""
    try:
        import xformers.ops as xops
    except Exception:  # xformers missing or built for another torch: fall back silently
        return None
    return xops


def xformers_available() -> bool:
    return _xformers_ops() is not None


def set_attention_backend(name: str) -> None:
    """Select the attention backend for every network in this process."""
    global _backend  # noqa: PLW0603 - one process-wide setting, by design (module docstring)
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "xformers" and not xformers_available():
        raise ValueError("attention backend 'xformers' was requested but xformers is not installed "
                         "(pip install 'iscene-server[cuda]')")
    _backend = name


def resolve_backend(device: torch.device) -> str:
    """The backend that will actually run for tensors on ``device``."""
    if _backend == "auto":
        return "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    if _backend == "xformers" and device.type != "cuda":
        return "sdpa"
    return _backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              valid_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention with the default 1/sqrt(head_dim) scale and no dropout.

    ``q`` is ``[B, Lq, H, D]``, ``k`` and ``v`` are ``[B, Lk, H, D]``; the result is ``[B, Lq, H, D]``.
    ``valid_keys [B, Lk]`` (bool, optional) hides padded keys; every row needs at least one valid key. A
    key mask runs through SDPA (on CUDA its memory-efficient kernel) even when xformers is selected.
    """
    backend = resolve_backend(q.device)
    if backend == "xformers" and valid_keys is None:
        return _xformers_ops().memory_efficient_attention(q, k, v)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    mask = None if valid_keys is None else valid_keys[:, None, None, :]  # [B, 1, 1, Lk] over heads and queries
    if backend == "naive":
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = scores.softmax(dim=-1) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2)


def block_diagonal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_lengths: list[int],
                             kv_lengths: list[int] | None = None) -> torch.Tensor:
    """xformers attention over segments packed along the rows, in one kernel: ``q [Nq, H, D]`` and ``k, v
    [Nk, H, D]`` hold consecutive segments of ``q_lengths`` and ``kv_lengths`` rows (default: ``q_lengths``);
    segment ``i`` of ``q`` attends to segment ``i`` of ``k, v`` only. Returns ``[Nq, H, D]``. Only for the
    xformers backend: callers check :func:`resolve_backend` first."""
    ops = _xformers_ops()
    mask = ops.fmha.BlockDiagonalMask.from_seqlens(q_lengths, kv_lengths)
    return ops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=mask)[0]  # [1, Nq, H, D] -> [Nq, H, D]
