"""A light placeholder mesh of an instance from its stage-1 occupancy: the exposed faces of its voxels.

The occupancy (cells of the ``GRID^3`` grid of the scene frame S) is pooled to the finest of the grids
64^3, 32^3, 16^3, 8^3 (a coarse cell is occupied when any of its fine cells is) whose exposed cell faces make at
most ``max_faces`` triangles; an occupancy so scattered that even 8^3 is over the cap goes on to 4^3, 2^3, 1^3,
which always fit. Every exposed face of an occupied cell (its neighbour across it is empty) becomes two
triangles wound counter-clockwise seen from outside, so the surface is closed and its normals point out; corners
are shared, so the mesh is watertight. Vertices are in S, like the instance meshes.
"""

from __future__ import annotations

import numpy as np

from .postprocess import ColoredMesh
from .voxels import GRID, occupancy_grid

PROXY_MAX_FACES = 3000  # triangles of one proxy mesh at most
PROXY_GREY = 0.8  # the flat colour of a proxy (sRGB, every channel)
POOLED_GRIDS = (64, 32, 16, 8, 4, 2, 1)  # finest first; the protocol's four, then the fallbacks that always fit
# For the face along +axis a: the two other axes (u, v) with e_u x e_v = e_a, so the corners
# (0, e_u, e_u + e_v, e_v) run counter-clockwise seen from +a.
CYCLIC = ((0, 1, 2), (1, 2, 0), (2, 0, 1))


def pooled(coords: np.ndarray, grid: int) -> np.ndarray:
    """Occupancy ``bool [grid, grid, grid]`` of ``coords [M, 3]`` (cells of ``GRID^3``) pooled by "any"."""
    fine = occupancy_grid(coords, GRID)[0] > 0  # [GRID, GRID, GRID]
    factor = GRID // grid
    return fine.reshape(grid, factor, grid, factor, grid, factor).any(axis=(1, 3, 5))


def exposed(occupied: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """``(axis, sign, cells [F, 3])``: occupied cells whose neighbour along ``sign * axis`` is empty."""
    padded = np.pad(occupied, 1)
    inner = (slice(1, -1),) * 3
    faces = []
    for axis in range(3):
        for sign in (1, -1):
            neighbour = list(inner)
            neighbour[axis] = slice(1 + sign, padded.shape[axis] - 1 + sign)
            cells = np.argwhere(occupied & ~padded[tuple(neighbour)])
            faces.append((axis, sign, cells))
    return faces


def face_count(occupied: np.ndarray) -> int:
    """Triangles of the proxy of ``occupied``: two per exposed cell face."""
    return 2 * sum(len(cells) for _, _, cells in exposed(occupied))


def quads(occupied: np.ndarray) -> np.ndarray:
    """Corners ``int [F, 4, 3]`` (grid units) of every exposed face, counter-clockwise seen from outside."""
    out = []
    for axis, sign, cells in exposed(occupied):
        a, u, v = CYCLIC[axis]
        e_a, e_u, e_v = np.eye(3, dtype=np.int64)[[a, u, v]]
        if sign > 0:  # on the far side of the cell, counter-clockwise seen from +a
            corners = np.stack([e_a, e_a + e_u, e_a + e_u + e_v, e_a + e_v])
        else:  # on the near side, the opposite order: counter-clockwise seen from -a
            corners = np.stack([0 * e_a, e_v, e_u + e_v, e_u])
        out.append(cells[:, None, :] + corners[None])  # [F, 4, 3]
    return np.concatenate(out) if out else np.zeros((0, 4, 3), np.int64)


def proxy_mesh(coords: np.ndarray, max_faces: int = PROXY_MAX_FACES) -> ColoredMesh | None:
    """The proxy of an instance's occupancy ``coords [M, 3]`` (int cells of ``GRID^3``); None when empty."""
    coords = np.asarray(coords)
    if coords.size == 0:
        return None
    for grid in POOLED_GRIDS:
        occupied = pooled(coords, grid)
        if face_count(occupied) <= max_faces:
            break
    corners = quads(occupied)  # [F, 4, 3]
    points, index = np.unique(corners.reshape(-1, 3), axis=0, return_inverse=True)
    index = index.reshape(-1, 4)
    faces = np.concatenate([index[:, [0, 1, 2]], index[:, [0, 2, 3]]])  # [2F, 3]
    vertices = points / grid - 0.5  # grid corners -> S
    return ColoredMesh(vertices, faces, np.full(vertices.shape, PROXY_GREY, np.float32))
