"""Submanifold sparse 3D convolution with spconv's stored weight layout ``[C_out, k, k, k, C_in]``.

Outputs exist exactly at the input voxels. Kernel index ``(r0, r1, r2)`` reads the input at
``out + (r0 - c, r1 - c, r2 - c)`` on axes (x, y, z) with ``c = k // 2`` (cross-correlation). For ``k = 1``
the reference (spconv 2.3's fast path, used to train the released weights) multiplies by the stored
weight's memory read as ``[C_in, C_out]``, not by its transpose; we reproduce that.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .tensor import SparseTensor


def voxel_keys(coords: torch.Tensor, offset: torch.Tensor | None = None, span: int | None = None) -> torch.Tensor:
    """Unique int64 keys of (batch, x, y, z) after adding ``offset`` (coordinates may reach -1 .. span-1)."""
    c = coords.long()
    if offset is not None:
        c = c + torch.cat([offset.new_zeros(1), offset]).to(c.device)
    s = span + 2
    return ((c[:, 0] * s + c[:, 1] + 1) * s + c[:, 2] + 1) * s + c[:, 3] + 1


def kernel_offsets(kernel_size: int, device=None) -> torch.Tensor:
    """All ``k^3`` offsets in kernel-index order ``r0*k*k + r1*k + r2``, as ``[k^3, 3]``."""
    r = torch.arange(kernel_size, device=device) - kernel_size // 2
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)


def neighbour_pairs(coords: torch.Tensor, kernel_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For every kernel offset, the (output rows, input rows) whose voxels are that offset apart."""
    span = int(coords[:, 1:].max()) + 1 if coords.shape[0] else 1
    keys = voxel_keys(coords, span=span)
    sorted_keys, order = torch.sort(keys)
    pairs = []
    for offset in kernel_offsets(kernel_size, coords.device):
        query = voxel_keys(coords, offset, span)
        pos = torch.searchsorted(sorted_keys, query).clamp_(max=max(sorted_keys.numel() - 1, 0))
        hit = sorted_keys[pos] == query if sorted_keys.numel() else torch.zeros_like(query, dtype=torch.bool)
        out_rows = torch.nonzero(hit).flatten()
        pairs.append((out_rows, order[pos[out_rows]]))
    return pairs


class SubMConv3dWeights(nn.Module):
    """Holds ``weight [C_out, k, k, k, C_in]`` and ``bias [C_out]`` (the ``.conv`` of the reference keys)."""

    is_torso_layer = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, kernel_size, kernel_size, kernel_size, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels))
        bound = (in_channels * kernel_size ** 3) ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)


class SparseConv3d(nn.Module):
    """Submanifold convolution (stride 1): keys ``conv.weight`` and ``conv.bias``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = SubMConv3dWeights(in_channels, out_channels, kernel_size)

    def forward(self, x: SparseTensor) -> SparseTensor:
        weight, bias = self.conv.weight, self.conv.bias
        c_out, k = weight.shape[0], weight.shape[1]
        feats = x.feats.to(weight.dtype)
        if k == 1:
            return x.replace(torch.addmm(bias, feats, weight.reshape(feats.shape[1], c_out)))
        pairs = x.cache.get_or_build(("subm", k), lambda: neighbour_pairs(x.coords, k))
        kernels = weight.reshape(c_out, k ** 3, -1)
        centre = k ** 3 // 2
        out = torch.addmm(bias, feats, kernels[:, centre].t()).float()
        for index, (out_rows, in_rows) in enumerate(pairs):
            if index == centre or out_rows.numel() == 0:
                continue
            out.index_add_(0, out_rows, (feats[in_rows] @ kernels[:, index].t()).float())
        return x.replace(out.to(weight.dtype))
