"""Sparse building blocks against dense references and their documented semantics.

The convolution has its own file, ``test_sparse_conv.py``.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from iscene_server.nn import attention as dense_attention
from iscene_server.nn.slat_mesh_decoder import SparseSiLU
from iscene_server.nn.sparse import (
    Segments,
    SparseDownsample,
    SparseGroupNorm32,
    SparseSubdivide,
    SparseTensor,
    SparseUpsample,
    segmented_attention,
    segmented_cross_attention,
)
from iscene_server.nn.sparse_transformer import window_segments


def random_voxels(batch: int, count: int, size: int, seed: int = 0) -> SparseTensor:
    """``count`` distinct voxels per item in a ``size^3`` grid, batch-contiguous, with 5 random channels."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        cells = torch.randperm(size ** 3, generator=g)[:count].sort().values
        xyz = torch.stack([cells // size ** 2, cells // size % size, cells % size], 1)
        rows.append(torch.cat([torch.full((count, 1), b), xyz], 1))
    coords = torch.cat(rows).int()
    return SparseTensor(torch.randn(len(coords), 5, generator=g), coords)


def test_downsample_averages_with_the_reference_zero_count():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 2, 2], [1, 0, 0, 1]], dtype=torch.int32)
    x = SparseTensor(torch.tensor([[2.0], [4.0], [3.0], [5.0]]), coords)
    down = SparseDownsample(2)(x)
    assert down.coords.tolist() == [[0, 0, 0, 0], [0, 1, 1, 1], [1, 0, 0, 0]]
    assert down.feats.flatten().tolist() == [(2 + 4) / 3, 3 / 2, 5 / 2]  # sum / (n + 1)
    up = SparseUpsample(2)(down.replace(down.feats * 10))
    assert up.coords is x.coords and up.cache is x.cache
    assert up.feats.flatten().tolist() == [20, 20, 15, 25]


def test_subdivide_emits_children_per_parent_in_lexicographic_order():
    x = SparseTensor(torch.tensor([[1.0], [2.0]]), torch.tensor([[0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.int32))
    sub = SparseSubdivide()(x)
    offsets = [[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    assert sub.coords[:8, 1:].tolist() == [[2 + i, j, k] for i, j, k in offsets]
    assert sub.coords[8:, 1:].tolist() == [[i, j, 2 + k] for i, j, k in offsets]
    assert sub.feats.flatten().tolist() == [1.0] * 8 + [2.0] * 8


def test_group_norm_is_per_batch_item():
    x = random_voxels(3, 40, 5, seed=2)
    x = x.replace(torch.randn(len(x.coords), 64) * 3 + 1)
    norm = SparseGroupNorm32(32, 64)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    ours = norm(x).feats
    for rows in x.batch_slices():
        reference = F.group_norm(x.feats[rows].T[None], 32, norm.weight, norm.bias, 1e-5)[0].T
        torch.testing.assert_close(ours[rows], reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
def test_segmented_attention_equals_attention_per_segment(backend):
    lengths = [5, 9, 5, 1, 12]
    order = torch.randperm(sum(lengths), generator=torch.Generator().manual_seed(4))
    q, k, v = torch.randn(3, sum(lengths), 2, 8).unbind(0)
    dense_attention.set_attention_backend(backend)
    try:
        out = segmented_attention(q, k, v, Segments(lengths, order))
        ctx_k, ctx_v = torch.randn(2, len(lengths), 7, 2, 8).unbind(0)
        cross = segmented_cross_attention(q, ctx_k, ctx_v, Segments(lengths))
    finally:
        dense_attention.set_attention_backend("auto")
    start = 0
    for i, n in enumerate(lengths):
        rows = order[start:start + n]
        expected = F.scaled_dot_product_attention(*(t[rows].transpose(0, 1) for t in (q, k, v))).transpose(0, 1)
        torch.testing.assert_close(out[rows], expected, atol=1e-5, rtol=1e-5)
        segment = slice(start, start + n)
        expected = F.scaled_dot_product_attention(q[segment].transpose(0, 1), ctx_k[i].transpose(0, 1),
                                                  ctx_v[i].transpose(0, 1)).transpose(0, 1)
        torch.testing.assert_close(cross[segment], expected, atol=1e-5, rtol=1e-5)
        start += n


def window_keys(coords: torch.Tensor, window: int, shift: int) -> list[tuple[int, ...]]:
    """The spec's window id of every token, ``(batch, floor((x+s)/w), floor((y+s)/w), floor((z+s)/w))``,
    computed in plain Python."""
    return [(b, *((c + shift) // window for c in xyz)) for b, *xyz in coords.tolist()]


@pytest.mark.parametrize("shift", [0, 4])
def test_windows_are_exactly_the_distinct_window_ids(shift):
    x = random_voxels(2, 300, 20, seed=5)
    segments = window_segments(x, 8, shift)
    keys = window_keys(x.coords, 8, shift)
    assert sorted(segments.order.tolist()) == list(range(len(keys)))  # every token once
    members, start = [], 0
    for n in segments.lengths:
        members.append({keys[i] for i in segments.order[start:start + n].tolist()})
        start += n
    assert all(len(ids) == 1 for ids in members)  # a segment never mixes two windows (or two batch items)
    assert sorted(next(iter(ids)) for ids in members) == sorted(Counter(keys))  # one segment per window id
    assert sorted(segments.lengths) == sorted(Counter(keys).values())
    assert max(segments.lengths) <= 512
    assert window_segments(x, 8, shift) is segments  # cached per coordinate set


def test_arithmetic_broadcasts_per_batch_item():
    x = random_voxels(2, 4, 3)
    per_item = torch.tensor([[1.0] * 5, [2.0] * 5])
    scaled = x * per_item
    torch.testing.assert_close(scaled.feats[:4], x.feats[:4])
    torch.testing.assert_close(scaled.feats[4:], 2 * x.feats[4:])
    assert scaled.cache is x.cache and (2.0 * x - x).feats.equal(x.feats)
    assert SparseSiLU()(x).feats.equal(F.silu(x.feats))
    assert x.shape == torch.Size([2, 5])
