"""The voxel grid of the scene frame S, and moving an instance's occupancy (cells of it) by an edit matrix.

S is the cube [-0.5, 0.5]^3 divided into ``GRID^3`` cells (stage-1 occupancy, the mesh and Gaussian decoders'
voxels). Cell ``(i, j, k)`` covers the grid-space box ``[i, i+1) x [j, j+1) x [k, k+1)`` where grid space is
``q = (p + 0.5) * grid``, so its centre is :func:`voxel_centres`.

An edit matrix maps scene-frame points ``p`` to ``T p`` (homogeneous, column vectors). Resampling is done
backwards: each candidate target cell is probed at ``supersample^3`` evenly spaced points, each point is mapped back
into the source by the inverse matrix, and the target cell is occupied when at least half of its probes land in
occupied source cells (the *majority rule*). Compared with "any probe", the majority rule keeps the volume unbiased
(a cell is kept when about half of it or more is covered, so ``scale s`` gives about ``s^3`` times the cells,
instead of growing every surface by up to a cell) and it reproduces whole-cell translations and grid rotations
exactly, since every probe of a target cell then lands in one and the same source cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .affine import check_matrix, is_identity
from .checks import no_check

GRID = 64  # cells along each axis of S
MAX_PROBES = 1 << 21  # probe points evaluated at once (bounds memory to a few tens of MB)


def voxel_centres(coords, grid: int = GRID):
    """Centres in S of cells ``[..., 3]`` (integer indices; numpy array or float tensor) of the ``grid^3`` grid."""
    return (coords + 0.5) / grid - 0.5


@dataclass
class TransformResult:
    coords: np.ndarray  # int16 [M', 3], sorted, unique
    dropped: float  # fraction of the source object's volume (probe points) moved outside the grid
    identity: bool  # the matrix was the identity: coords are the input's, unchanged


def canonical(coords: np.ndarray) -> np.ndarray:
    """Coordinates as int16 ``[M, 3]``, lexicographically sorted (x, then y, then z), without duplicates."""
    c = np.asarray(coords).reshape(-1, 3).astype(np.int16)
    return np.unique(c, axis=0) if len(c) else c


def check_coords(coords: np.ndarray, grid: int) -> np.ndarray:
    c = np.asarray(coords)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"voxel coords must have shape [M, 3], got {c.shape}")
    if len(c) and (c.min() < 0 or c.max() >= grid):
        raise ValueError(f"voxel coords must lie in [0, {grid}), got range [{c.min()}, {c.max()}]")
    return c.astype(np.int64)


def grid_space_affine(matrix: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` such that grid-space points move as ``q' = A q + b`` (``q = (p + 0.5) * grid``)."""
    a = matrix[:3, :3]
    b = grid * (matrix[:3, 3] + 0.5 * (1.0 - a.sum(axis=1)))
    return a, b


def probe_offsets(supersample: int) -> np.ndarray:
    """The ``supersample^3`` probe positions inside a unit cell, ``[S^3, 3]``, symmetric about its centre."""
    ticks = (np.arange(supersample) + 0.5) / supersample
    return np.stack(np.meshgrid(ticks, ticks, ticks, indexing="ij"), axis=-1).reshape(-1, 3)


def target_box(coords: np.ndarray, a: np.ndarray, b: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive-exclusive index range of target cells that can be touched: the moved source bounding box, clipped."""
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    corners = np.stack(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij"), axis=-1).reshape(-1, 3) @ a.T + b
    start = np.clip(np.floor(corners.min(axis=0)).astype(np.int64), 0, grid)
    stop = np.clip(np.ceil(corners.max(axis=0)).astype(np.int64), 0, grid)
    return None if (stop <= start).any() else (start, stop)


def lookup(occupied: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Whether grid-space points ``[N, 3]`` fall in occupied cells of the dense boolean grid (outside: False)."""
    grid = occupied.shape[0]
    cells = np.floor(points).astype(np.int64)
    inside = ((cells >= 0) & (cells < grid)).all(axis=1)
    hit = np.zeros(len(points), dtype=bool)
    c = cells[inside]
    hit[inside] = occupied[c[:, 0], c[:, 1], c[:, 2]]
    return hit


def resample(occupied: np.ndarray, a: np.ndarray, b: np.ndarray, start: np.ndarray, stop: np.ndarray,
             supersample: int, check: Callable[[], None] = no_check) -> np.ndarray:
    """Target cells within ``[start, stop)`` with at least half of their probes mapping into occupied source cells;
    ``check()`` before each chunk of probes."""
    inverse = np.linalg.inv(a)
    offsets = probe_offsets(supersample)
    axes = [np.arange(s, e) for s, e in zip(start, stop, strict=True)]
    cells = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    needed = (len(offsets) + 1) // 2
    kept = []
    step = max(1, MAX_PROBES // len(offsets))
    for first in range(0, len(cells), step):
        check()
        chunk = cells[first:first + step]
        probes = (chunk[:, None, :] + offsets[None]).reshape(-1, 3)
        hits = lookup(occupied, (probes - b) @ inverse.T).reshape(len(chunk), len(offsets))
        kept.append(chunk[hits.sum(axis=1) >= needed])
    return np.concatenate(kept)


def dropped_fraction(coords: np.ndarray, a: np.ndarray, b: np.ndarray, grid: int, supersample: int) -> float:
    """Fraction of the source's probe points that the matrix moves outside the grid."""
    offsets = probe_offsets(supersample)
    outside = 0
    step = max(1, MAX_PROBES // len(offsets))
    for first in range(0, len(coords), step):
        moved = (coords[first:first + step, None, :] + offsets[None]).reshape(-1, 3) @ a.T + b
        outside += int((((moved < 0) | (moved >= grid)).any(axis=1)).sum())
    return outside / (len(coords) * len(offsets))


def transform_voxels(coords: np.ndarray, matrix: np.ndarray, grid: int = GRID, supersample: int = 2,
                     check: Callable[[], None] = no_check) -> TransformResult:
    """Move occupied cells ``[M, 3]`` of the ``grid^3`` scene grid by the 4x4 scene-frame matrix (see module doc);
    ``check()`` is called between chunks of the work and raises to stop it."""
    if not 1 <= supersample <= 8:
        raise ValueError(f"supersample must be within [1, 8], got {supersample}")
    m = check_matrix(matrix)
    source = check_coords(coords, grid)
    if is_identity(m):
        return TransformResult(canonical(coords), 0.0, True)
    if len(source) == 0:
        return TransformResult(np.zeros((0, 3), np.int16), 0.0, False)
    a, b = grid_space_affine(m, grid)
    dropped = dropped_fraction(source, a, b, grid, supersample)
    box = target_box(source, a, b, grid)
    if box is None:
        return TransformResult(np.zeros((0, 3), np.int16), dropped, False)
    occupied = np.zeros((grid, grid, grid), dtype=bool)
    occupied[source[:, 0], source[:, 1], source[:, 2]] = True
    moved = resample(occupied, a, b, *box, supersample, check)
    return TransformResult(canonical(moved), dropped, False)


def occupancy_grid(coords: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Dense 0/1 float32 occupancy ``[1, grid, grid, grid]`` (dims D, H, W = x, y, z), the SS encoder's input
    layout. numpy, not torch: this module is imported by the camera solve's worker processes, which never load
    torch."""
    c = check_coords(coords, grid)
    out = np.zeros((1, grid, grid, grid), dtype=np.float32)
    out[0, c[:, 0], c[:, 1], c[:, 2]] = 1.0
    return out


def union(coords: list[np.ndarray]) -> np.ndarray:
    """All cells occupied in any of the coordinate sets, canonical (int16, sorted, unique)."""
    parts = [np.asarray(c).reshape(-1, 3) for c in coords]
    return canonical(np.concatenate(parts)) if parts else np.zeros((0, 3), np.int16)
