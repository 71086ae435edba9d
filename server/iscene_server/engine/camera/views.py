"""The scene's voxels as one axis-aligned orientation sees them: only those that can show, in its camera axes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...geometry.voxels import GRID
from .inputs import FitScene


@dataclass
class View:
    """The scene's surface voxels that can show in one orientation, in its camera axes, sorted near to far."""

    index: int
    rotation: np.ndarray
    q: np.ndarray  # [N, 3]
    instance: np.ndarray  # [N]
    front: np.ndarray  # [N] first of its instance along the view direction: all an orthographic view can show
    side: np.ndarray  # [N] outermost of its instance sideways: what a perspective view shows besides

    @classmethod
    def build(cls, scene: FitScene, index: int, rotation: np.ndarray) -> View:
        """Within one instance, only the first voxel of each line along the view axis can show orthographically
        (the others are exactly behind it); perspective also shows sides, whose voxels are outermost along the
        image axes. Silhouettes and inter-instance occlusion need nothing else."""
        coords, instance = scene.coords, scene.instance
        forward = int(np.argmax(np.abs(rotation[2])))
        front = outermost(coords, instance, forward, lowest=rotation[2, forward] > 0)
        side = np.zeros_like(front)
        for axis in {0, 1, 2} - {forward}:
            side |= outermost(coords, instance, axis, True) | outermost(coords, instance, axis, False)
        keep = front | side
        q = scene.points[keep] @ rotation.T
        order = np.argsort(q[:, 2], kind="stable")
        return cls(index, rotation, q[order], instance[keep][order], front[keep][order], side[keep][order])

    def subset(self, perspective: bool) -> tuple[np.ndarray, np.ndarray]:
        """The voxels (``q``, instance) a perspective or an orthographic camera can show."""
        keep = self.front | self.side if perspective else self.front
        return self.q[keep], self.instance[keep]


def outermost(coords: np.ndarray, instance: np.ndarray, axis: int, lowest: bool) -> np.ndarray:
    """Whether each voxel is the lowest (or highest) along ``axis`` of its instance's voxels on its grid line."""
    others = [a for a in range(3) if a != axis]
    line = (instance * GRID + coords[:, others[0]]) * GRID + coords[:, others[1]]
    position = coords[:, axis] if lowest else GRID - 1 - coords[:, axis]
    best = np.full((instance.max(initial=0) + 1) * GRID * GRID, GRID)
    np.minimum.at(best, line, position)
    return position == best[line]
