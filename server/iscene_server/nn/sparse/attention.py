"""Attention within segments of rows: batch items (full attention) or windows (shifted-window attention).

On CUDA with xformers installed, all segments run in one kernel with a block-diagonal mask. Otherwise
segments of equal length are stacked and run through the dense attention function (SDPA), one call per
distinct length: exact (no padding), memory-efficient kernels, and no Python loop over segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..attention import _xformers_ops, attention, resolve_backend


@dataclass
class Segments:
    """Rows grouped into contiguous runs after applying ``order`` (None = already grouped)."""

    lengths: list[int]
    order: torch.Tensor | None = None
    _groups: list[tuple[int, torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    def by_length(self, device) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(length, row index [G, length], segment ids [G])`` for each distinct segment length."""
        if self._groups is None:
            lengths = torch.tensor(self.lengths, dtype=torch.long)
            starts = torch.cumsum(lengths, 0) - lengths
            groups = []
            for length in torch.unique(lengths).tolist():
                ids = torch.nonzero(lengths == length).flatten()
                rows = starts[ids, None] + torch.arange(length)
                groups.append((length, rows.to(device), ids.to(device)))
            self._groups = groups
        return self._groups


def _grouped(x: torch.Tensor, segments: Segments) -> torch.Tensor:
    return x if segments.order is None else x[segments.order]


def _ungrouped(out: torch.Tensor, segments: Segments) -> torch.Tensor:
    if segments.order is None:
        return out
    result = torch.empty_like(out)
    result[segments.order] = out
    return result


def segmented_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Self-attention of ``q, k, v [N, H, D]`` within each segment; returns ``[N, H, D]``."""
    q, k, v = (_grouped(t, segments) for t in (q, k, v))
    if resolve_backend(q.device) == "xformers":
        xops = _xformers_ops()
        mask = xops.fmha.BlockDiagonalMask.from_seqlens(segments.lengths)
        out = xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=mask)[0]
    else:
        out = torch.empty_like(q)
        for _, rows, _ in segments.by_length(q.device):
            out[rows] = attention(q[rows], k[rows], v[rows])
    return _ungrouped(out, segments)


def segmented_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Rows of segment ``b`` of ``q [N, H, D]`` attend to context ``k, v [B, T, H, D]`` item ``b``."""
    q = _grouped(q, segments)
    if resolve_backend(q.device) == "xformers":
        xops = _xformers_ops()
        mask = xops.fmha.BlockDiagonalMask.from_seqlens(segments.lengths, [k.shape[1]] * k.shape[0])
        out = xops.memory_efficient_attention(q[None], k.flatten(0, 1)[None], v.flatten(0, 1)[None],
                                              attn_bias=mask)[0]
    else:
        out = torch.empty_like(q)
        for _, rows, ids in segments.by_length(q.device):
            out[rows] = attention(q[rows], k[ids], v[ids])
    return _ungrouped(out, segments)
