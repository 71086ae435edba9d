"""Z-buffered rectangle splats on a canvas of sample points, and per-instance IoU counted on it.

The camera solver renders voxels as the bounding rectangles of their projected cubes; a label map and those
renders are compared on the same canvas: one sample per square cell, moved to the centre of the image pixel that
holds the cell's centre, so that both are sampled at the very same points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Canvas:
    """A grid of sample points, one per square cell of ``cell`` pixels (see the module docstring)."""

    xs: np.ndarray  # [columns] sample x (pixel centres, increasing)
    ys: np.ndarray  # [rows] sample y
    cell: float
    labels: np.ndarray  # [rows, columns] index into ``fitted`` of the label map at the samples, -1 elsewhere
    inside: np.ndarray  # [rows, columns] samples inside the image (outside it nothing is known)
    trusted: np.ndarray  # [rows, columns] samples with all 4 neighbours inside the image too

    @classmethod
    def covering(cls, box: np.ndarray, cell: float, ids: np.ndarray, fitted: list[int]) -> Canvas:
        """The canvas over the pixel box ``(x0, y0, x1, y1)`` sampling the label map ``ids`` ``[H, W]``; only the
        labels in ``fitted`` count, by their position in it."""
        start = np.floor(box[:2] / cell) * cell
        columns, rows = (np.ceil((box[2:] - start) / cell).astype(int) + 1).tolist()
        xs = np.floor(start[0] + cell * (np.arange(columns) + 0.5)) + 0.5
        ys = np.floor(start[1] + cell * (np.arange(rows) + 0.5)) + 0.5
        height, width = ids.shape
        inside = ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]
        padded = np.pad(inside, 1, constant_values=True)
        trusted = inside & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        return cls(xs, ys, cell, sample_labels(ids, xs, ys, fitted), inside, trusted)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.ys), len(self.xs)


def sample_labels(ids: np.ndarray, xs: np.ndarray, ys: np.ndarray, fitted: list[int]) -> np.ndarray:
    """``[rows, columns]`` int32: the position in ``fitted`` of the label at each sample, -1 for other labels,
    background and samples outside the image."""
    x, y = xs.astype(np.int64), ys.astype(np.int64)
    height, width = ids.shape
    valid_x, valid_y = (x >= 0) & (x < width), (y >= 0) & (y < height)
    sampled = np.zeros((len(ys), len(xs)), dtype=np.int64)
    sampled[np.ix_(valid_y, valid_x)] = ids[np.ix_(y[valid_y], x[valid_x])]
    order = np.argsort(fitted)
    sorted_labels = np.asarray(fitted, dtype=np.int64)[order]
    position = np.clip(np.searchsorted(sorted_labels, sampled), 0, len(fitted) - 1)
    hit = (sorted_labels[position] == sampled) & (sampled != 0)
    return np.where(hit, order[position], -1).astype(np.int32)


def splat_rectangles(canvas: Canvas, low: np.ndarray, high: np.ndarray, max_cells: float) -> np.ndarray:
    """Z-buffered splats: for each sample the index of the first rectangle ``[low, high)`` (pixels, ``[n, 2]``
    each, sorted near to far) that covers it, ``-1`` for none; ``[rows, columns]``. Rectangles are cut to at most
    ``max_cells`` cells across (larger ones would only cost time)."""
    rows, columns = canvas.shape
    high = np.minimum(high, low + max_cells * canvas.cell)
    first = np.stack([np.searchsorted(canvas.xs, low[:, 0]), np.searchsorted(canvas.ys, low[:, 1])], axis=1)
    last = np.stack([np.searchsorted(canvas.xs, high[:, 0]), np.searchsorted(canvas.ys, high[:, 1])], axis=1)
    span = int(np.max(last - first, initial=0))
    nearest = np.full(rows * columns, len(low), dtype=np.int64)
    if span > 0:
        steps = np.arange(span)
        x = first[:, 0, None] + steps  # [n, span]
        y = first[:, 1, None] + steps
        covered = (y < last[:, 1, None])[:, :, None] & (x < last[:, 0, None])[:, None, :]  # [n, span, span]
        flat = y[:, :, None] * columns + x[:, None, :]
        index = np.broadcast_to(np.arange(len(low))[:, None, None], covered.shape)
        np.minimum.at(nearest, flat[covered], index[covered])
    nearest[nearest == len(low)] = -1
    return nearest.reshape(rows, columns)


def canvas_iou(rendered: np.ndarray, canvas: Canvas, count: int) -> np.ndarray:
    """Per-instance IoU ``[count]`` of a rendered instance-index image (``-1`` = none) and the canvas' label
    samples, counted inside the image only."""
    masks = canvas.labels
    rendered = np.where(canvas.inside, rendered, -1)
    inter = np.bincount(rendered[(rendered == masks) & (rendered >= 0)], minlength=count)[:count]
    area_rendered = np.bincount(rendered[rendered >= 0], minlength=count)[:count]
    area_masks = np.bincount(masks[masks >= 0], minlength=count)[:count]
    union = area_rendered + area_masks - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)
