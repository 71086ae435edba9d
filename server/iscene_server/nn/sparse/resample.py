"""Changing the voxel resolution: pool by 2 (and back), subdivide into 8 children."""

from __future__ import annotations

import torch
import torch.nn as nn

from .tensor import CoordinateCache, SparseTensor


def _pool_map(x: SparseTensor, factor: int):
    """Coarse coordinates (unique, sorted by (b, x, y, z)), the coarse row of every fine row, and counts.

    How many coarse voxels there are depends on the data, so this waits for the device once per coordinate
    set (it is cached); the forward passes themselves never do.
    """
    coarse = x.coords.clone()
    coarse[:, 1:] = torch.div(coarse[:, 1:], factor, rounding_mode="floor")
    unique, inverse, counts = torch.unique(coarse, dim=0, return_inverse=True, return_counts=True)
    return unique.to(x.coords.dtype), inverse, counts, CoordinateCache()


class SparseDownsample(nn.Module):
    """Average-pool by ``factor`` as the reference does on CUDA: ``sum(children) / (n_children + 1)``.

    (The reference's ``scatter_reduce(..., 'mean')`` counts its zero initial value.) The fine coordinates
    are remembered so that :class:`SparseUpsample` restores them, cache included.
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: SparseTensor) -> SparseTensor:
        coords, inverse, counts, coarse_cache = x.cache.get_or_build(("down", self.factor),
                                                                     lambda: _pool_map(x, self.factor))
        coarse_cache.setdefault(("up", self.factor), (x.coords, x.cache, inverse))
        summed = torch.zeros(coords.shape[0], x.feats.shape[1], dtype=torch.float32, device=x.device)
        summed.index_add_(0, inverse, x.feats.float())
        feats = (summed / (counts + 1).unsqueeze(1).to(summed.dtype)).to(x.dtype)
        return SparseTensor(feats, coords, x.batch_size, coarse_cache)


class SparseUpsample(nn.Module):
    """Nearest-neighbour unpooling back to the coordinates a :class:`SparseDownsample` came from."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: SparseTensor) -> SparseTensor:
        if ("up", self.factor) not in x.cache:
            raise ValueError("SparseUpsample needs a tensor produced by SparseDownsample")
        fine_coords, fine_cache, inverse = x.cache[("up", self.factor)]
        return SparseTensor(x.feats[inverse], fine_coords, x.batch_size, fine_cache)


def _children(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The 8 child offsets ``[8, 3]`` in (dx, dy, dz) lexicographic order, made on the device (a copy from
    the host would wait for the device)."""
    a = torch.arange(8, device=device, dtype=dtype)
    return torch.stack([a // 4, a // 2 % 2, a % 2], dim=1)


def _subdivide_coords(x: SparseTensor):
    children = _children(x.coords.device, x.coords.dtype)
    coords = x.coords.clone()
    coords[:, 1:] *= 2
    coords = (coords[:, None, :] + torch.cat([children.new_zeros(8, 1), children], 1)[None]).flatten(0, 1)
    return coords, CoordinateCache()


class SparseSubdivide(nn.Module):
    """Every voxel becomes its 8 children at twice the resolution, emitted consecutively per parent in
    (dx, dy, dz) lexicographic order; features are copied."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        coords, cache = x.cache.get_or_build("subdivide", lambda: _subdivide_coords(x))
        feats = x.feats.repeat_interleave(8, dim=0)
        return SparseTensor(feats, coords, x.batch_size, cache)
