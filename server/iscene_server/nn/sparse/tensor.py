"""The sparse tensor: voxel coordinates ``[N, 4] = (batch, x, y, z)`` and features ``[N, C]``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class CoordinateCache(dict):
    """Values derived from one coordinate set, shared by every tensor with those coordinates."""

    def get_or_build(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self:
            self[key] = build()
        return self[key]


class SparseTensor:
    """Features on occupied voxels. Rows of one batch item are contiguous and in batch order.

    Arithmetic with another sparse tensor acts on features (the coordinates must be the same object);
    with a ``[B, C]`` tensor it broadcasts row ``b`` to every voxel of item ``b``; with a scalar it acts on
    all features. ``shape`` is ``(batch size, channels)``, as samplers expect.
    """

    def __init__(self, feats: torch.Tensor, coords: torch.Tensor, batch_size: int | None = None,
                 cache: CoordinateCache | None = None):
        self.feats = feats
        self.coords = coords
        self.cache = cache if cache is not None else CoordinateCache()
        if batch_size is None:
            batch_size = self.cache.get_or_build("batch_size", lambda: int(coords[:, 0].max()) + 1
                                                 if coords.shape[0] else 0)
        self.batch_size = batch_size

    # --- derived from the coordinates -------------------------------------------------------------
    def batch_counts(self) -> torch.Tensor:
        """Voxels per batch item ``[B]`` (int64, on the coordinates' device)."""
        return self.cache.get_or_build("batch_counts", lambda: torch.bincount(
            self.coords[:, 0].long(), minlength=self.batch_size))

    def batch_lengths(self) -> list[int]:
        return self.cache.get_or_build("batch_lengths", lambda: self.batch_counts().tolist())

    def batch_index(self) -> torch.Tensor:
        """The batch item of every row ``[N]`` (int64)."""
        return self.cache.get_or_build("batch_index", self.coords[:, 0].long)

    def batch_slices(self) -> list[slice]:
        ends = torch.tensor(self.batch_lengths()).cumsum(0).tolist()
        return [slice(e - n, e) for e, n in zip(ends, self.batch_lengths(), strict=True)]

    # --- tensor-like interface --------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size([self.batch_size, self.feats.shape[-1]])

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    def replace(self, feats: torch.Tensor) -> SparseTensor:
        """New features on the same coordinates (and the same cache)."""
        return SparseTensor(feats, self.coords, self.batch_size, self.cache)

    def type(self, dtype: torch.dtype) -> SparseTensor:
        return self.replace(self.feats.type(dtype))

    def float(self) -> SparseTensor:
        return self.type(torch.float32)

    def to(self, device) -> SparseTensor:
        return SparseTensor(self.feats.to(device), self.coords.to(device), self.batch_size)

    def repeat_batch(self, copies: int) -> SparseTensor:
        """The batch repeated ``copies`` times (copy ``i`` of item ``b`` is item ``b + i B``). The repeated
        coordinates and their cache are built once and kept in this tensor's cache."""

        def build() -> tuple[torch.Tensor, CoordinateCache]:
            coords = self.coords.repeat(copies, 1)
            copy = torch.arange(copies, device=coords.device).repeat_interleave(self.coords.shape[0])
            coords[:, 0] += (copy * self.batch_size).to(coords.dtype)
            return coords, CoordinateCache()

        coords, cache = self.cache.get_or_build(("repeat_batch", copies), build)
        return SparseTensor(self.feats.repeat(copies, 1), coords, self.batch_size * copies, cache)

    def __getitem__(self, item: int) -> SparseTensor:
        """Batch item ``item`` as a one-item tensor (batch index 0)."""
        rows = self.batch_slices()[item]
        coords = self.coords[rows].clone()
        coords[:, 0] = 0
        return SparseTensor(self.feats[rows], coords, 1)

    def _other(self, other):
        if isinstance(other, SparseTensor):
            if other.coords is not self.coords and not torch.equal(other.coords, self.coords):
                raise ValueError("sparse tensors on different coordinates cannot be combined")
            return other.feats
        if isinstance(other, torch.Tensor) and other.dim() == 2 and self.batch_size > 0 \
                and other.shape[0] == self.batch_size:
            return other[self.batch_index()]
        return other

    def __add__(self, other):
        return self.replace(self.feats + self._other(other))

    __radd__ = __add__

    def __sub__(self, other):
        return self.replace(self.feats - self._other(other))

    def __rsub__(self, other):
        return self.replace(self._other(other) - self.feats)

    def __mul__(self, other):
        return self.replace(self.feats * self._other(other))

    __rmul__ = __mul__

    def __neg__(self):
        return self.replace(-self.feats)

    def __repr__(self) -> str:
        return f"SparseTensor(batch={self.batch_size}, voxels={self.feats.shape[0]}, channels={self.feats.shape[-1]})"
