"""The orientation search's closed-form fit: silhouette moments of a render matched to the masks' moments."""

from __future__ import annotations

import numpy as np

from ...geometry.raster.splats import Canvas
from .projection import CX, CY, TX, TY, M


def moments(image: np.ndarray, canvas: Canvas, count: int) -> np.ndarray:
    """Per instance of an instance-index image: area (samples), centroid (pixels, 2) and spread (standard
    deviation, pixels, 2); ``[count, 5]``."""
    rows, columns = np.nonzero(image >= 0)
    which = image[rows, columns]
    x, y = canvas.xs[columns], canvas.ys[rows]
    area = np.bincount(which, minlength=count).astype(np.float64)
    safe = np.maximum(area, 1)
    mean_x, mean_y = np.bincount(which, x, count) / safe, np.bincount(which, y, count) / safe
    var_x = np.bincount(which, x * x, count) / safe - mean_x ** 2
    var_y = np.bincount(which, y * y, count) / safe - mean_y ** 2
    cell_var = canvas.cell ** 2 / 12  # the spread of one cell, so that tiny regions have a size
    return np.stack([area, mean_x, mean_y, np.sqrt(np.maximum(var_x, 0) + cell_var),
                     np.sqrt(np.maximum(var_y, 0) + cell_var)], axis=1)


def similarity_fit(measured: np.ndarray, target: np.ndarray, theta: np.ndarray) -> np.ndarray | None:
    """The orthographic ``theta`` that makes the moments ``measured`` (of a render under ``theta``) match
    ``target``.

    Orthographic silhouettes, occlusion included, are similar figures for every scale and offset, so one render
    gives them in scene units (centroid ``(c - principal) / m - t``, spread ``s / m``) and the new ``(m, a, b)``
    of ``u = m x + a, v = m y + b`` solve the centroid and spread equations by least squares, each instance
    weighted by the square root of its mask's area.
    """
    m0, t0, principal = theta[M], theta[TX:TY + 1], theta[CX:CY + 1]
    centroid = (measured[:, 1:3] - principal) / m0 - t0
    spread = measured[:, 3:5] / m0
    n = len(measured)
    design, rhs = np.zeros((4 * n, 3)), np.zeros(4 * n)
    design[:n, 0], design[:n, 1], rhs[:n] = centroid[:, 0], 1.0, target[:, 1]
    design[n:2 * n, 0], design[n:2 * n, 2], rhs[n:2 * n] = centroid[:, 1], 1.0, target[:, 2]
    design[2 * n:3 * n, 0], rhs[2 * n:3 * n] = spread[:, 0], target[:, 3]
    design[3 * n:, 0], rhs[3 * n:] = spread[:, 1], target[:, 4]
    weight = np.tile(np.sqrt(target[:, 0] / target[:, 0].max()), 4)
    solution, *_ = np.linalg.lstsq(design * weight[:, None], rhs * weight, rcond=None)
    m, a, b = solution
    if not np.isfinite(solution).all() or m <= 0:
        return None
    out = theta.copy()
    out[M] = m
    out[TX:TY + 1] = (np.array([a, b]) - principal) / m
    return out
