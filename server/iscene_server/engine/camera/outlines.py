"""Instance outlines as edge points, by edge class: the masks' (pixel-exact) here; the renders' in alignment."""

from __future__ import annotations

import numpy as np

EDGE_CLASSES = ((0, 1), (0, -1), (1, 1), (1, -1))
"""Outline edges by (image axis, side): right (x max), left, bottom (y max) and top edges of a region."""
MAX_OUTLINE_POINTS = 400  # outline points per instance and edge class in one alignment step


def subsample(index: np.ndarray) -> np.ndarray:
    """At most :data:`MAX_OUTLINE_POINTS` of ``index``, evenly spread."""
    if index.size <= MAX_OUTLINE_POINTS:
        return index
    return index[np.linspace(0, index.size - 1, MAX_OUTLINE_POINTS).astype(np.int64)]


def mask_edges(ids: np.ndarray, label: int, box) -> list[np.ndarray]:
    """The pixel-exact outline of one label's mask, per :data:`EDGE_CLASSES`: points ``[n, 2]`` in the middle of
    the pixel edges between the mask and its outside, except edges on the image border (nothing is known past
    it). At most :data:`MAX_OUTLINE_POINTS` per class, evenly spread."""
    height, width = ids.shape
    x0, y0, x1, y1 = int(box[0]) - 1, int(box[1]) - 1, int(box[2]) + 1, int(box[3]) + 1
    known = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    known[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = True
    mask = np.zeros_like(known)
    mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = ids[cy0:cy1, cx0:cx1] == label
    edges = []
    for axis, side in EDGE_CLASSES:
        array_axis = 1 - axis
        beyond = np.roll(mask, -side, axis=array_axis)
        beyond_known = np.roll(known, -side, axis=array_axis)
        found = mask & ~beyond & beyond_known
        border = [slice(None), slice(None)]
        border[array_axis] = -1 if side > 0 else 0
        found[tuple(border)] = False  # np.roll wrapped around there
        rows, columns = np.nonzero(found)
        points = np.stack([x0 + columns + 0.5, y0 + rows + 0.5], axis=1)
        points[:, axis] += 0.5 * side
        edges.append(points[subsample(np.arange(len(points)))])
    return edges
