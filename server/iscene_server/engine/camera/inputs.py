"""What the camera fit starts from: the crop box, and the instances that take part (surface voxels, mask boxes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...geometry.voxels import GRID, voxel_centres


@dataclass
class Crop:
    centre: np.ndarray  # [2] pixels
    side: float  # pixels

    @classmethod
    def from_box(cls, crop_box) -> Crop:
        x0, y0, x1, y1 = (float(v) for v in crop_box)
        if not np.all(np.isfinite([x0, y0, x1, y1])):
            raise ValueError(f"crop_box must be finite, got {crop_box}")
        return cls(np.array([(x0 + x1) / 2, (y0 + y1) / 2]), max(abs(x1 - x0), abs(y1 - y0), 1.0))


@dataclass
class FitScene:
    """The instances taking part in the fit: their surface voxels and the bounding boxes of their masks."""

    labels: list[int]  # every input label, in input order
    fitted: list[int]  # the labels with voxels and a mask; position in this list = instance index below
    coords: np.ndarray  # [N, 3] surface voxels (grid coordinates)
    instance: np.ndarray  # [N]
    mask_boxes: np.ndarray  # [n, 4] pixel bounding boxes (x0, y0, x1, y1) of the fitted masks, x1/y1 exclusive

    @classmethod
    def build(cls, voxels: dict[int, np.ndarray], ids: np.ndarray) -> FitScene | None:
        """The scene of ``voxels[label]`` (grid coordinates) and label map ``ids``; None when no label has both
        voxels and a mask."""
        fitted, boxes, surfaces = [], [], []
        for label, given in voxels.items():
            coords = clean_coords(given)
            box = mask_box(ids, int(label)) if len(coords) and int(label) > 0 else None
            if box is not None:
                fitted.append(int(label))
                boxes.append(box)
                surfaces.append(surface(coords))
        if not fitted:
            return None
        instance = np.concatenate([np.full(len(coords), i) for i, coords in enumerate(surfaces)])
        return cls([int(label) for label in voxels], fitted, np.concatenate(surfaces), instance, np.array(boxes))

    @property
    def points(self) -> np.ndarray:
        """Voxel centres in S, ``[N, 3]``."""
        return voxel_centres(self.coords)


def clean_coords(coords) -> np.ndarray:
    """Unique int64 grid coordinates ``[M, 3]`` inside the grid."""
    coords = np.asarray(coords).reshape(-1, 3).astype(np.int64)
    return np.unique(coords[np.all((coords >= 0) & (coords < GRID), axis=1)], axis=0)


def mask_box(ids: np.ndarray, label: int) -> tuple[int, int, int, int] | None:
    """Pixel bounding box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of one label's mask; None when it has none."""
    mask = ids == label
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def surface(coords: np.ndarray) -> np.ndarray:
    """The voxels of ``coords`` with an empty 6-neighbour."""
    occupied = np.zeros((GRID + 2,) * 3, dtype=bool)
    occupied[tuple((coords + 1).T)] = True
    steps = np.concatenate([np.eye(3, dtype=np.int64), -np.eye(3, dtype=np.int64)])
    neighbours = coords[:, None, :] + 1 + steps  # [N, 6, 3]
    return coords[~occupied[tuple(np.moveaxis(neighbours, 2, 0))].all(axis=1)]
