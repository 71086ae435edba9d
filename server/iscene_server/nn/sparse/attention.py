"""Attention within segments of rows: batch items (full attention) or windows (shifted-window attention).

On CUDA with xformers installed, all segments run in one kernel with a block-diagonal mask. Otherwise segments
are padded into a few dense batches and run through the dense attention function (SDPA) with a key mask:
segments are bucketed by length (lengths in ``(L/2, L]`` share a batch padded to the bucket's longest), and a
bucket is split into calls of at most :data:`PADDED_TOKENS_PER_CALL` padded rows. The number of attention calls
therefore grows with the logarithm of the longest segment and with the total size, never with the number of
distinct lengths; the padded copies stay bounded; the boolean key mask keeps SDPA on its memory-efficient
kernel on CUDA (flash on the CPU), so no call materialises ``[segments, L, L]`` scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..attention import attention, block_diagonal_attention, resolve_backend

PADDED_TOKENS_PER_CALL = 1 << 17  # padded rows per attention call (bounds the padded q/k/v copies)


@dataclass(frozen=True)
class PaddedBatch:
    """One attention call: segments ``segment_ids [G]`` padded to ``[G, L]``.

    ``gather [G * L]`` is the input row of every padded slot (padding repeats the segment's first row),
    ``valid [G, L]`` marks real slots, and ``kept [M]`` / ``rows [M]`` send the real slots of the flattened
    ``[G * L]`` output back to their input rows; ``valid`` and ``kept`` are None when nothing is padded.
    """

    length: int
    segment_ids: torch.Tensor
    gather: torch.Tensor
    valid: torch.Tensor | None
    kept: torch.Tensor | None
    rows: torch.Tensor

    def to(self, device: torch.device) -> PaddedBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return PaddedBatch(self.length, move(self.segment_ids), move(self.gather), move(self.valid),
                           move(self.kept), move(self.rows))


def plan_padded_batches(lengths: list[int], order: torch.Tensor | None, tokens_per_call: int) -> list[PaddedBatch]:
    """Bucket segments by ``ceil(log2(length))`` and split buckets into calls (built on the CPU)."""
    sizes = torch.tensor(lengths, dtype=torch.long)
    starts = torch.cumsum(sizes, 0) - sizes
    order = None if order is None else order.cpu()
    buckets = torch.ceil(torch.log2(sizes.clamp(min=1).double())).long()
    batches = []
    for bucket in torch.unique(buckets).tolist():
        ids = torch.nonzero(buckets == bucket).flatten()
        length = int(sizes[ids].max())
        per_call = max(1, tokens_per_call // length)
        for chunk in ids.split(per_call):
            offsets = torch.arange(length)
            valid = offsets < sizes[chunk, None]  # [G, L]
            grouped = starts[chunk, None] + torch.where(valid, offsets, 0)  # [G, L] rows in segment order
            rows = grouped if order is None else order[grouped]
            if bool(valid.all()):
                batches.append(PaddedBatch(length, chunk, rows.flatten(), None, None, rows.flatten()))
                continue
            kept = torch.nonzero(valid.flatten()).flatten()
            batches.append(PaddedBatch(length, chunk, rows.flatten(), valid, kept, rows.flatten()[kept]))
    return batches


@dataclass
class Segments:
    """Rows grouped into contiguous runs after applying ``order`` (None = already grouped)."""

    lengths: list[int]
    order: torch.Tensor | None = None
    _batches: dict[str, list[PaddedBatch]] = field(default_factory=dict, repr=False)

    def padded_batches(self, device: torch.device) -> list[PaddedBatch]:
        """The attention calls covering every segment, cached per device."""
        key = str(device)
        if key not in self._batches:
            plan = plan_padded_batches(self.lengths, self.order, PADDED_TOKENS_PER_CALL)
            self._batches[key] = [batch.to(device) for batch in plan]
        return self._batches[key]

    def head(self, count: int) -> Segments:
        """The first ``count`` segments (for ``order`` None: the rows before ``sum(lengths[:count])``)."""
        if self.order is not None:
            raise ValueError("only segments in row order can be cut")
        return Segments(self.lengths[:count])


def _grouped(x: torch.Tensor, segments: Segments) -> torch.Tensor:
    return x if segments.order is None else x[segments.order]


def _ungrouped(out: torch.Tensor, segments: Segments) -> torch.Tensor:
    if segments.order is None:
        return out
    result = torch.empty_like(out)
    result[segments.order] = out
    return result


def _padded(x: torch.Tensor, batch: PaddedBatch) -> torch.Tensor:
    """Rows ``[N, H, D]`` -> padded segments ``[G, L, H, D]``."""
    return x[batch.gather].unflatten(0, (-1, batch.length))


def _scatter(out: torch.Tensor, padded: torch.Tensor, batch: PaddedBatch) -> None:
    """Write the real slots of ``padded [G, L, H, D]`` into their rows of ``out [N, H, D]``."""
    flat = padded.flatten(0, 1)
    out[batch.rows] = flat if batch.kept is None else flat[batch.kept]


def segmented_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Self-attention of ``q, k, v [N, H, D]`` within each segment; returns ``[N, H, D]``."""
    if resolve_backend(q.device) == "xformers":
        q, k, v = (_grouped(t, segments) for t in (q, k, v))
        return _ungrouped(block_diagonal_attention(q, k, v, segments.lengths), segments)
    out = torch.empty_like(q)
    for batch in segments.padded_batches(q.device):
        _scatter(out, attention(_padded(q, batch), _padded(k, batch), _padded(v, batch), batch.valid), batch)
    return out


def segmented_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Rows of segment ``b`` of ``q [N, H, D]`` attend to context ``k, v [B, T, H, D]`` item ``b``."""
    if resolve_backend(q.device) == "xformers":
        out = block_diagonal_attention(_grouped(q, segments), k.flatten(0, 1), v.flatten(0, 1), segments.lengths,
                                       [k.shape[1]] * k.shape[0])  # context item b: rows [b T, (b + 1) T)
        return _ungrouped(out, segments)
    out = torch.empty_like(q)
    for batch in segments.padded_batches(q.device):
        # padded queries only: every context token is a real key
        _scatter(out, attention(_padded(q, batch), k[batch.segment_ids], v[batch.segment_ids]), batch)
    return out
