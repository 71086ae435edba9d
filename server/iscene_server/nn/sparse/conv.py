"""Submanifold sparse 3D convolution with spconv's stored weight layout ``[C_out, k, k, k, C_in]``.

Outputs exist exactly at the input voxels. Kernel index ``(r0, r1, r2)`` — flattened ``r0*k*k + r1*k + r2`` —
reads the input at ``out + (r0 - c, r1 - c, r2 - c)`` on axes (x, y, z) with ``c = k // 2``
(cross-correlation). For ``k = 1`` the reference (spconv 2.3's fast path, used to train the released weights)
multiplies by the stored weight's memory read as ``[C_in, C_out]``, not by its transpose; we reproduce that.

How it runs (built for the GPU: a fixed number of kernels, no host synchronisation):

* once per coordinate set, :func:`neighbour_table` gives ``[N, k^3]`` input rows in kernel-index order, with
  ``N`` (a zero row appended to the features) where the neighbour is not occupied. Every step has a size
  known from the shapes alone (sort, searchsorted, compare, select), so nothing waits for the device.
  Keys use a fixed span per axis, which bounds the coordinates: x, y, z must lie in
  ``[0, COORDINATE_LIMIT)`` and the batch index must be ``>= 0``. The bound is checked with an asynchronous
  device assertion: on the CPU it raises at once; on CUDA it fails at the next synchronisation.
* the forward gathers the neighbour features of a chunk of rows into columns ``[rows, k^3 * C_in]`` and
  multiplies them by the weight viewed as ``[k^3 * C_in, C_out]`` in one GEMM with the bias (``addmm``).
  Missing neighbours read the zero row. With half-precision weights (the torso on CUDA) the features are
  cast to the weight's dtype, the GEMM accumulates in float32 inside the BLAS (cuBLAS' compute type; its
  split-K reductions follow ``torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction``) and
  rounds once, and the output has the weight's dtype. The chunk size follows from a memory budget for the
  column buffer and the shapes only; a cached conv whose input fits one chunk dispatches 6 aten operations
  (7 with the input cast). This is the CUDA strategy, ``"columns"``.
* on the CPU, where a host synchronisation costs nothing and the multiply-adds are the bottleneck, the
  ``"pairs"`` strategy skips the missing neighbours (a fifth of the work on a surface): per kernel offset
  it gathers only the voxels that have that neighbour (lists derived once from the table and cached),
  multiplies them by that offset's weight and adds them into the output rows — the gather-GEMM-scatter of
  spconv's CPU build, on the same table. Both strategies give the same result up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tensor import SparseTensor

COORDINATE_LIMIT = 1024
"""x, y, z of every voxel must lie in ``[0, COORDINATE_LIMIT)`` (the networks use at most 256)."""

CUDA_COLUMN_BUDGET_BYTES = 512 << 20
"""Column buffer per chunk on CUDA: the caching allocator reuses it; a chunk still holds over ten thousand
rows at 768 half-precision channels, so launches stay few, and the transient peak stays modest."""

CPU_COLUMN_BUDGET_BYTES = 64 << 20
"""Column buffer per chunk elsewhere: larger buffers are mapped afresh (page faults) for every chunk,
smaller ones make the GEMMs short."""


STRATEGIES = ("columns", "pairs")


def column_budget_bytes(device: torch.device) -> int:
    return CUDA_COLUMN_BUDGET_BYTES if device.type == "cuda" else CPU_COLUMN_BUDGET_BYTES


def default_strategy(device: torch.device) -> str:
    """``"columns"`` (a fixed number of kernels, no synchronisation) on CUDA, ``"pairs"`` (no work on missing
    neighbours) elsewhere."""
    return "columns" if device.type == "cuda" else "pairs"


def kernel_offsets(kernel_size: int, device=None) -> torch.Tensor:
    """All ``k^3`` offsets in kernel-index order ``r0*k*k + r1*k + r2``, as ``[k^3, 3]``."""
    r = torch.arange(kernel_size, device=device) - kernel_size // 2
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)


def _check_coordinate_bounds(coords: torch.Tensor) -> None:
    """Asynchronous: no host synchronisation on CUDA."""
    inside = (coords[:, 1:] >= 0).all() & (coords[:, 1:] < COORDINATE_LIMIT).all() & (coords[:, 0] >= 0).all()
    torch._assert_async(inside, f"sparse convolution: voxel coordinates must lie in [0, {COORDINATE_LIMIT}) and "
                                "batch indices be >= 0; rescale or crop the voxels, or raise "
                                "iscene_server.nn.sparse.conv.COORDINATE_LIMIT")


def neighbour_table(coords: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``[N, k^3]`` int64: the input row at every kernel offset of every voxel, ``N`` where there is none."""
    n, pad = coords.shape[0], kernel_size // 2
    if n == 0:
        return torch.empty(0, kernel_size ** 3, dtype=torch.long, device=coords.device)
    c = coords.long()                                                       # [N, 4] = (b, x, y, z)
    _check_coordinate_bounds(c)
    span = COORDINATE_LIMIT + 2 * pad  # every axis value + pad, neighbours included, lies in [0, span)
    keys = ((c[:, 0] * span + c[:, 1] + pad) * span + c[:, 2] + pad) * span + c[:, 3] + pad      # [N]
    offsets = kernel_offsets(kernel_size, coords.device)                                        # [k^3, 3]
    offset_keys = (offsets[:, 0] * span + offsets[:, 1]) * span + offsets[:, 2]                 # [k^3]
    queries = keys[:, None] + offset_keys[None, :]                                              # [N, k^3]
    sorted_keys, order = torch.sort(keys)
    position = torch.searchsorted(sorted_keys, queries).clamp_(max=n - 1)                       # [N, k^3]
    return torch.where(sorted_keys[position] == queries, order[position], n)


def submanifold_conv3d(feats: torch.Tensor, table: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       budget_bytes: int) -> torch.Tensor:
    """``feats [N, C_in]``, ``table [N, k^3]`` (:func:`neighbour_table`), ``weight [C_out, k, k, k, C_in]``
    -> ``[N, C_out]``, one gather and one ``addmm`` per chunk of at most ``budget_bytes`` of columns."""
    n, c_in = feats.shape
    c_out = weight.shape[0]
    width = table.shape[1] * c_in
    padded = F.pad(feats, (0, 0, 0, 1))                            # [N + 1, C_in], row N is the missing neighbour
    columns_weight = weight.reshape(c_out, width).t()              # [k^3 * C_in, C_out], row kidx * C_in + c
    rows = max(1, budget_bytes // (width * feats.element_size()))

    def chunk_conv(chunk: torch.Tensor) -> torch.Tensor:
        columns = F.embedding(chunk, padded).reshape(chunk.shape[0], width)   # row gather -> [rows, k^3 * C_in]
        return torch.addmm(bias, columns, columns_weight)                     # [rows, C_out]

    return chunk_conv(table) if n <= rows else torch.cat([chunk_conv(chunk) for chunk in table.split(rows)])


def neighbour_pairs(table: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per kernel offset, ``(output rows, input rows)`` of the voxels that have that neighbour (host syncs:
    for the CPU strategy only)."""
    n = table.shape[0]
    pairs = []
    for column in table.t():                                       # [N] input row per voxel, N where none
        out_rows = torch.nonzero(column < n).flatten()
        pairs.append((out_rows, column[out_rows]))
    return pairs


def submanifold_conv3d_pairs(feats: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]],
                             weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same convolution as :func:`submanifold_conv3d`, from :func:`neighbour_pairs`: per offset one gather,
    one GEMM and one row-add, only over the voxels that have that neighbour."""
    c_out, c_in, volume = weight.shape[0], feats.shape[1], len(pairs)
    per_offset = weight.reshape(c_out, volume, c_in).permute(1, 2, 0).contiguous()  # [k^3, C_in, C_out]
    centre = volume // 2                                           # every voxel is its own centre neighbour
    out = torch.addmm(bias, feats, per_offset[centre])             # [N, C_out]
    for index, (out_rows, in_rows) in enumerate(pairs):
        if index != centre:
            out.index_add_(0, out_rows, torch.mm(feats.index_select(0, in_rows), per_offset[index]))
    return out


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
    """Submanifold convolution (stride 1): keys ``conv.weight`` and ``conv.bias``.

    ``strategy`` (``"columns"`` or ``"pairs"``) overrides the per-device choice (:func:`default_strategy`),
    ``column_budget_bytes`` the per-device chunk budget of the columns strategy (:func:`column_budget_bytes`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = SubMConv3dWeights(in_channels, out_channels, kernel_size)
        self.strategy: str | None = None
        self.column_budget_bytes: int | None = None

    def forward(self, x: SparseTensor) -> SparseTensor:
        weight, bias = self.conv.weight, self.conv.bias
        c_out, k = weight.shape[0], weight.shape[1]
        feats = x.feats.to(weight.dtype)
        if k == 1:
            return x.replace(torch.addmm(bias, feats, weight.reshape(feats.shape[1], c_out)))
        table = x.cache.get_or_build(("subm", k), lambda: neighbour_table(x.coords, k))
        strategy = self.strategy or default_strategy(feats.device)
        if strategy == "pairs":
            pairs = x.cache.get_or_build(("subm_pairs", k), lambda: neighbour_pairs(table))
            return x.replace(submanifold_conv3d_pairs(feats, pairs, weight, bias))
        if strategy != "columns":
            raise ValueError(f"unknown sparse convolution strategy {strategy!r}; choose {', '.join(STRATEGIES)}")
        budget = self.column_budget_bytes or column_budget_bytes(feats.device)
        return x.replace(submanifold_conv3d(feats, table, weight, bias, budget))
