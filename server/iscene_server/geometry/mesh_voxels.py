"""Voxelising a triangle mesh of the scene frame S into the cells of the ``grid^3`` volume: surface cells, and the
cells a closed surface encloses.

Grid space is ``q = (p + 0.5) * grid`` and cell ``(i, j, k)`` is ``[i, i+1) x [j, j+1) x [k, k+1)``, as in
:mod:`.voxels`.

Surface cells are the cells a triangle overlaps, tested exactly with the separating-axis theorem (the three box
axes, the triangle's normal and the nine cross products of its edges with the box axes) on closed cells. Before the
test every triangle is moved by :data:`BOUNDARY_NUDGE` of a cell along +x, +y and +z, so a point exactly on a cell
boundary counts in the cell the floor rule gives it (a plane at grid-space z = 20 marks layer 20 only, not 19 and 20)
and still no point of the surface falls between cells (the test stays exact, on a mesh moved by a millionth of a
cell). Degenerate triangles (zero area) are kept: they mark the cells their segment or point touches.

Candidate cells are found per triangle without enumerating its 3D bounding box: along the axis its normal is
largest on (``up``), the columns of its projected bounding box are first tested against the three separating axes
that do not depend on height (edge x up), and each remaining column meets the triangle's plane within at most 2
cells of height, so 1–4 cells per column are tested against the other axes. A degenerate or needle-thin triangle
(:data:`DEGENERATE`), whose plane is too ill-conditioned to place candidates, tests the whole height of its box.
Work runs in chunks of at most :data:`MAX_PAIRS` (triangle, cell) pairs, with ``check()`` between them.

Filling: on a work grid covering the mesh's cells plus one cell of padding, the empty cells 6-connected to the
padding are exterior; every other empty region is interior and filled, unless it holds a cell of ``hollow_around``
(a room shell around other objects stays hollow). An open mesh encloses nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .checks import no_check
from .voxels import GRID, canonical

BOUNDARY_NUDGE = 1e-6  # cells every triangle moves along +x, +y, +z: boundary points count in their floor cell
TOLERANCE = 1e-9  # cells of slack on separating-axis intervals, far above float64 rounding, far below the nudge
CANDIDATE_SLACK = 1e-3  # cells added around each column's plane interval before rounding it to cells
DEGENERATE = 1e-6  # |normal| below this times the longest edge squared: too thin for its plane to find candidates
PER_CELL_AXES = 7  # Triangles.axes tested per (triangle, cell) pair; the rest per column
MAX_PAIRS = 1 << 18  # (triangle, cell) pairs tested at once (bounds memory to tens of MB)


@dataclass
class MeshVoxels:
    coords: np.ndarray  # int16 [M, 3] canonical (voxels.canonical): occupied cells inside the volume [0, grid)^3
    surface: int  # how many of them the triangles overlap
    filled: int  # how many are enclosed interior (filled)
    clipped: bool  # some of the mesh lies outside the volume (its cells there were dropped)


@dataclass
class Triangles:
    """Per-triangle quantities of the overlap test, in grid space (nudged)."""

    low: np.ndarray  # float64 [F, 3] bounding box
    high: np.ndarray  # float64 [F, 3]
    axes: np.ndarray  # float64 [F, 3, 10] (component, axis): the normal, the 6 edge_j x box axis_i across
    # ``up``, then the 3 edge_j x up (which do not depend on a cell's up coordinate: tested per column)
    lower: np.ndarray  # float64 [F, 10] an overlapping cell centre c has lower <= axes . c <= upper
    upper: np.ndarray  # float64 [F, 10]
    normal: np.ndarray  # float64 [F, 3]
    offset: np.ndarray  # float64 [F] normal . (a vertex)
    up: np.ndarray  # int64 [F] the axis the normal is largest on (the column direction)
    flat: np.ndarray  # bool [F] degenerate: no usable plane


def triangle_tests(corners: np.ndarray) -> Triangles:
    """The separating-axis intervals of triangles ``[F, 3, 3]`` (grid space) against unit cells."""
    v0, v1, v2 = corners[:, 0], corners[:, 1], corners[:, 2]  # [F, 3] each
    edges = [v1 - v0, v2 - v1, v0 - v2]  # [F, 3] each
    normal = np.cross(edges[0], -edges[2])  # [F, 3]
    magnitude = np.abs(normal)
    up = magnitude.argmax(axis=1)  # [F]
    zero = np.zeros(len(corners))
    by_box_axis = [[], [], []]  # edge x box axis i, for each edge, written out
    for e in edges:
        ex, ey, ez = e[:, 0], e[:, 1], e[:, 2]
        by_box_axis[0].append(np.stack([zero, ez, -ey], axis=1))
        by_box_axis[1].append(np.stack([-ez, zero, ex], axis=1))
        by_box_axis[2].append(np.stack([ey, -ex, zero], axis=1))
    crossed = np.stack([np.stack(group, axis=2) for group in by_box_axis], axis=1)  # [F, box axis, 3, edge]
    rows = np.arange(len(corners))[:, None]
    order = np.stack([(up + 1) % 3, (up + 2) % 3, up], axis=1)  # [F, 3] the up axis last
    crossed = crossed[rows, order].transpose(0, 2, 1, 3).reshape(-1, 3, 9)  # [F, 3, 9]: last 3 are edge x up
    axes = np.concatenate([normal[:, :, None], crossed], axis=2)  # [F, 3, 10] component-major
    p0, p1, p2 = (v[:, 0, None] * axes[:, 0] + v[:, 1, None] * axes[:, 1] + v[:, 2, None] * axes[:, 2]
                  for v in (v0, v1, v2))  # [F, 10] each axis . each corner
    extent = np.abs(axes[:, 0]) + np.abs(axes[:, 1]) + np.abs(axes[:, 2])  # [F, 10] twice the cell's half-extent
    reach = 0.5 * extent + TOLERANCE * extent
    longest = np.maximum(np.maximum((edges[0] ** 2).sum(axis=1), (edges[1] ** 2).sum(axis=1)),
                         (edges[2] ** 2).sum(axis=1))  # [F]
    return Triangles(
        low=np.minimum(np.minimum(v0, v1), v2), high=np.maximum(np.maximum(v0, v1), v2), axes=axes,
        lower=np.minimum(np.minimum(p0, p1), p2) - reach, upper=np.maximum(np.maximum(p0, p1), p2) + reach,
        normal=normal, offset=p0[:, 0], up=up,
        flat=magnitude.max(axis=1) <= DEGENERATE * longest,
    )


def overlaps(tests: Triangles, triangle: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Whether triangle ``triangle[p]`` overlaps cell ``cells[p]`` (closed cells), for pairs ``[P]``."""
    centres = cells + 0.5  # [P, 3]
    keep = ((centres - 0.5 <= tests.high[triangle] + TOLERANCE)
            & (centres + 0.5 >= tests.low[triangle] - TOLERANCE)).all(axis=1)  # the three box axes
    axes = tests.axes[triangle, :, :PER_CELL_AXES]  # [P, 3, 7] (the other 3 were tested per column)
    lower, upper = tests.lower[triangle, :PER_CELL_AXES], tests.upper[triangle, :PER_CELL_AXES]  # [P, 7]
    along = centres[:, 0, None] * axes[:, 0] + centres[:, 1, None] * axes[:, 1] + centres[:, 2, None] * axes[:, 2]
    keep &= ((along >= lower) & (along <= upper)).all(axis=1)  # [P]
    return keep


def in_projection(tests: Triangles, t: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Whether each column (cells ``[C, 3]``, up coordinate 0) can meet its triangle ``t`` seen along ``up``: the
    three separating axes edge x up-axis, which do not depend on the up coordinate (their up component is 0)."""
    centres = cells + 0.5  # [C, 3]
    axes = tests.axes[t, :, PER_CELL_AXES:]  # [C, 3, 3]
    along = centres[:, 0, None] * axes[:, 0] + centres[:, 1, None] * axes[:, 1] + centres[:, 2, None] * axes[:, 2]
    return ((along >= tests.lower[t, PER_CELL_AXES:]) & (along <= tests.upper[t, PER_CELL_AXES:])).all(axis=1)


def columns(tests: Triangles, chosen: np.ndarray, start: np.ndarray, stop: np.ndarray):
    """The cell columns of triangles ``chosen`` along their ``up`` axis, within the work range [start, stop), that
    pass :func:`in_projection`: ``(triangle [C], cells [C, 3] with the up coordinate 0, up axis [C], first [C],
    last [C])``, where cells first..last (inclusive) along the up axis are the column's candidates."""
    up = tests.up[chosen]  # [T]
    across = np.stack([(up + 1) % 3, (up + 2) % 3], axis=1)  # [T, 2] the two axes a column spans
    rows = np.arange(len(chosen))[:, None]
    low = np.floor(tests.low[chosen] - CANDIDATE_SLACK).astype(np.int64)  # [T, 3]
    high = np.floor(tests.high[chosen] + CANDIDATE_SLACK).astype(np.int64)
    low, high = np.maximum(low, start), np.minimum(high, stop - 1)
    first_across, last_across = low[rows, across], high[rows, across]  # [T, 2]
    sizes = np.maximum(last_across - first_across + 1, 0)  # [T, 2]
    counts = sizes[:, 0] * sizes[:, 1]  # [T]
    triangle = np.repeat(np.arange(len(chosen)), counts)  # [C] row in ``chosen``
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    u = first_across[triangle, 0] + local // np.maximum(sizes[triangle, 1], 1)
    v = first_across[triangle, 1] + local % np.maximum(sizes[triangle, 1], 1)
    t = chosen[triangle]
    cells = np.zeros((len(t), 3), dtype=np.int64)
    c = np.arange(len(t))
    cells[c, across[triangle, 0]] = u
    cells[c, across[triangle, 1]] = v
    inside = in_projection(tests, t, cells)
    t, cells, triangle, u, v = t[inside], cells[inside], triangle[inside], u[inside], v[inside]
    c = np.arange(len(t))
    w_low, w_high = tests.low[t, up[triangle]], tests.high[t, up[triangle]]  # [C] the triangle's own range
    plane = ~tests.flat[t]
    n = tests.normal[t]  # [C, 3]
    n_up = np.where(plane, n[c, up[triangle]], 1.0)
    centre = (tests.offset[t] - n[c, across[triangle, 0]] * (u + 0.5) - n[c, across[triangle, 1]] * (v + 0.5)) / n_up
    spread = 0.5 * (np.abs(n[c, across[triangle, 0]]) + np.abs(n[c, across[triangle, 1]])) / np.abs(n_up)
    w_low = np.where(plane, np.maximum(w_low, centre - spread), w_low)
    w_high = np.where(plane, np.minimum(w_high, centre + spread), w_high)
    first = np.maximum(np.floor(w_low - CANDIDATE_SLACK).astype(np.int64), start[up[triangle]])
    last = np.minimum(np.floor(w_high + CANDIDATE_SLACK).astype(np.int64), stop[up[triangle]] - 1)
    return t, cells, up[triangle], first, last


def surface_cells(tests: Triangles, start: np.ndarray, stop: np.ndarray,
                  check: Callable[[], None]) -> np.ndarray:
    """Cells ``[N, 3]`` (grid indices, repeats possible) in [start, stop) that some triangle overlaps."""
    low = np.floor(tests.low - CANDIDATE_SLACK).astype(np.int64)
    high = np.floor(tests.high + CANDIDATE_SLACK).astype(np.int64)
    low, high = np.maximum(low, start), np.minimum(high, stop - 1)
    extent = np.maximum(high - low + 1, 0)  # [F, 3]
    up = tests.up
    rows = np.arange(len(up))
    cost = extent[rows, (up + 1) % 3] * extent[rows, (up + 2) % 3]  # columns per triangle
    cost = np.where(tests.flat, cost * extent[rows, up], cost * 4)  # candidate cells per triangle, at most
    hits = []
    begin = 0
    total = np.cumsum(cost)
    while begin < len(cost):
        base = total[begin - 1] if begin else 0
        end = max(begin + 1, int(np.searchsorted(total, base + MAX_PAIRS, side="right")))
        check()
        t, cells, up_axis, first, last = columns(tests, np.arange(begin, end), start, stop)
        hits.extend(column_hits(tests, t, cells, up_axis, first, last, check))
        begin = end
    return np.concatenate(hits) if hits else np.zeros((0, 3), np.int64)


def column_hits(tests: Triangles, t: np.ndarray, cells: np.ndarray, up: np.ndarray, first: np.ndarray,
                last: np.ndarray, check: Callable[[], None]) -> list[np.ndarray]:
    """Expand columns into their candidate cells in pieces of at most :data:`MAX_PAIRS` and keep the overlaps."""
    counts = np.maximum(last - first + 1, 0)  # [C]
    total = np.cumsum(counts)
    hits = []
    begin = 0
    while begin < len(counts):
        base = total[begin - 1] if begin else 0
        end = max(begin + 1, int(np.searchsorted(total, base + MAX_PAIRS, side="right")))
        check()
        piece = np.arange(begin, end)
        column = np.repeat(piece, counts[piece])  # [P]
        step = np.arange(len(column)) - np.repeat(np.cumsum(counts[piece]) - counts[piece], counts[piece])
        candidates = cells[column].copy()  # [P, 3]
        candidates[np.arange(len(column)), up[column]] = first[column] + step
        keep = overlaps(tests, t[column], candidates)
        hits.append(candidates[keep])
        begin = end
    return hits


def voxelise_mesh(vertices: np.ndarray, faces: np.ndarray, hollow_around: np.ndarray | None = None,
                  grid: int = GRID, reach: float = 1.5, check: Callable[[], None] = no_check) -> MeshVoxels:
    """The cells of the ``grid^3`` volume that the mesh (``vertices`` [V, 3] in S, ``faces`` [F, 3]) occupies:
    its surface cells, and the regions it encloses unless they hold a cell of ``hollow_around`` ([K, 3] volume
    cells). Parts beyond ``reach`` (S in [-reach, reach]^3) are ignored; ``check()`` runs between chunks."""
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"face indices must lie in [0, {len(v)})")
    if not np.isfinite(v).all():
        raise ValueError("vertex positions must be finite")
    corners = (v[f] + 0.5) * grid + BOUNDARY_NUDGE  # [F, 3, 3] grid space
    empty = MeshVoxels(np.zeros((0, 3), np.int16), 0, 0, False)
    if len(f) == 0:
        return empty
    clipped = bool((corners < 0).any() or (corners >= grid).any())
    reach_start = np.full(3, int(np.floor((0.5 - reach) * grid)))
    reach_stop = np.full(3, int(np.ceil((0.5 + reach) * grid)))
    low, high = corners.min(axis=1), corners.max(axis=1)  # [F, 3]
    inside = ((high >= reach_start) & (low < reach_stop)).all(axis=1)
    corners = corners[inside]
    if len(corners) == 0:
        return MeshVoxels(empty.coords, 0, 0, clipped)
    start = np.maximum(np.floor(low[inside].min(axis=0)).astype(np.int64), reach_start)  # mesh cells, clipped
    stop = np.minimum(np.floor(high[inside].max(axis=0)).astype(np.int64) + 1, reach_stop)
    origin = start - 1  # one cell of padding on every side
    shape = tuple(int(n) for n in stop - start + 2)
    surface = np.zeros(shape, dtype=bool)  # [X, Y, Z] the work grid
    cells = surface_cells(triangle_tests(corners), start, stop, check) - origin
    surface[cells[:, 0], cells[:, 1], cells[:, 2]] = True
    check()
    filled = enclosed(surface, hollow_around, origin)
    volume = tuple(slice(max(0, -o), max(0, min(n, grid - o))) for o, n in zip(origin, shape, strict=True))
    kept_surface, kept_filled = surface[volume], filled[volume]
    coords = np.argwhere(kept_surface | kept_filled) + origin + [s.start for s in volume]
    return MeshVoxels(canonical(coords), int(kept_surface.sum()), int(kept_filled.sum()), clipped)


def enclosed(surface: np.ndarray, hollow_around: np.ndarray | None, origin: np.ndarray) -> np.ndarray:
    """Empty cells of the work grid not 6-connected to its border, minus regions holding a ``hollow_around``
    cell (volume coordinates; ``origin`` is the work grid's first cell)."""
    labels, _ = ndimage.label(~surface)  # 6-connected empty regions, 0 = surface
    border = np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel(),
                             labels[:, :, 0].ravel(), labels[:, :, -1].ravel()])
    open_regions = np.unique(border)
    if hollow_around is not None and len(hollow_around):
        held = np.asarray(hollow_around, dtype=np.int64).reshape(-1, 3) - origin
        held = held[((held >= 0) & (held < surface.shape)).all(axis=1)]
        open_regions = np.union1d(open_regions, labels[held[:, 0], held[:, 1], held[:, 2]])
    return (labels > 0) & ~np.isin(labels, open_regions)
