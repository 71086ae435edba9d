"""The solver's camera parametrisation, and voxels projected with it: pixels, footprints, derivatives, silhouettes.

All cameras share one parametrisation, ``theta = (m, k, tx, ty, cx, cy)``, with ``q = R p`` an S point in the
camera axes of the orientation ``R`` (OpenCV: x right, y down, z forward):

    u = m (q_x + tx) / (1 + k q_z) + cx,     v = m (q_y + ty) / (1 + k q_z) + cy

``m`` is the magnification (pixels per scene unit at the depth of S's origin) and ``k`` the inverse distance
from the camera to that depth; ``k = 0`` is orthographic. The perspective camera is ``f = m / k``,
``t = (tx, ty, 1 / k)``. Unlike ``(f, distance)``, this stays well conditioned as the perspective vanishes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...geometry.raster.splats import Canvas, splat_rectangles
from ...geometry.voxels import GRID
from .model import ORTHOGRAPHIC, PERSPECTIVE, Camera

M, K, TX, TY, CX, CY = range(6)  # positions in theta
ORTHO_DEPTH = 2.0  # distance from an orthographic camera to S's origin plane (any value in front of S works)
MAX_FOOTPRINT = 12.0  # cells; larger voxel footprints only occur for absurd candidate cameras
HALF_VOXEL = 0.5 / GRID  # half a voxel's side in S


def project(q: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Pixels ``[n, 2]`` of camera-axis points ``q`` under ``theta``."""
    scale = theta[M] / (1.0 + theta[K] * q[:, 2])
    return (q[:, :2] + theta[TX:TY + 1]) * scale[:, None] + theta[CX:CY + 1]


def footprint(q: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel bounding rectangles ``(low, high)``, ``[n, 2]`` each, of the projected voxel cubes centred on ``q``.

    The rectangle spans the cube's near and far faces, so off the optical axis it holds the side faces a cube
    shows in perspective; it exceeds the exact (hexagonal) silhouette only at two corners.
    """
    near, far = 1.0 + theta[K] * (q[:, 2:] - HALF_VOXEL), 1.0 + theta[K] * (q[:, 2:] + HALF_VOXEL)
    start = q[:, :2] + theta[TX:TY + 1] - HALF_VOXEL
    end = start + 2 * HALF_VOXEL
    low = np.minimum(start / near, start / far)
    high = np.maximum(end / near, end / far)
    return theta[M] * low + theta[CX:CY + 1], theta[M] * high + theta[CX:CY + 1]


def jacobian(q: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``d(u, v) / d theta`` of camera-axis points ``q``, ``[n, 2, 6]``."""
    denominator = 1.0 + theta[K] * q[:, 2]
    xy = q[:, :2] + theta[TX:TY + 1]
    jac = np.zeros((len(q), 2, 6))
    jac[:, :, M] = xy / denominator[:, None]
    jac[:, :, K] = -theta[M] * xy * (q[:, 2] / denominator ** 2)[:, None]
    jac[:, 0, TX] = jac[:, 1, TY] = theta[M] / denominator
    jac[:, 0, CX] = jac[:, 1, CY] = 1.0
    return jac


def edge_jacobian(q: np.ndarray, theta: np.ndarray, axis: int, side: np.ndarray) -> np.ndarray:
    """``d(edge) / d theta``, ``[n, 6]``, of the ``side`` (+1 high, -1 low) edge along image ``axis`` of the
    footprints of voxels ``q``: the derivative of the projected cube corner that makes that edge."""
    numerator = q[:, axis] + theta[TX + axis] + side * HALF_VOXEL
    corner = q.copy()
    corner[:, axis] += side * HALF_VOXEL
    # the near face sticks out away from the axis
    corner[:, 2] += np.where(side * numerator > 0, -HALF_VOXEL, HALF_VOXEL)
    return jacobian(corner, theta)[:, axis, :]


def max_k(q: np.ndarray) -> float:
    """The largest inverse distance that keeps every point at least 1/8 of the distance in front of the camera."""
    nearest = -float(np.min(q[:, 2], initial=0.0))
    return 0.875 / nearest if nearest > 0 else 4.0


def camera_from_theta(rotation: np.ndarray, theta: np.ndarray, image_size: tuple[int, int]) -> Camera:
    """The :class:`Camera` of orientation ``rotation`` and parameters ``theta``."""
    principal = (theta[CX], theta[CY])
    if theta[K] <= 0:
        return Camera(ORTHOGRAPHIC, rotation, (theta[TX], theta[TY], ORTHO_DEPTH), theta[M], principal, image_size)
    distance = 1.0 / theta[K]
    return Camera(PERSPECTIVE, rotation, (theta[TX], theta[TY], distance), theta[M] * distance, principal,
                  image_size)


@dataclass
class Silhouettes:
    """Voxels splatted on a canvas: the nearest voxel and its instance at each sample, and the footprints."""

    owner: np.ndarray  # [rows, columns] index of the nearest covering voxel, -1 for none
    rendered: np.ndarray  # [rows, columns] its instance, -1 for none
    low: np.ndarray  # [n, 2] footprint rectangles (pixels)
    high: np.ndarray  # [n, 2]


def render_silhouettes(canvas: Canvas, q: np.ndarray, instance: np.ndarray, theta: np.ndarray) -> Silhouettes:
    """Splat voxels ``q`` (camera axes, sorted near to far) of instances ``instance`` under ``theta``."""
    low, high = footprint(q, theta)
    owner = splat_rectangles(canvas, low, high, MAX_FOOTPRINT)
    return Silhouettes(owner, np.where(owner >= 0, instance[owner], -1), low, high)
