"""Edit transforms: 4x4 affine matrices of the scene frame S (column vectors), validated and applied to points."""

from __future__ import annotations

import numpy as np

MIN_SCALE, MAX_SCALE = 1e-2, 1e2  # allowed singular values of the matrix's linear part
IDENTITY_TOLERANCE = 1e-6


def check_affine(matrix) -> np.ndarray:
    """The matrix as float64 ``[4, 4]``; ValueError unless it is a finite affine matrix (any scale)."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("transform must be a 4x4 matrix: 4 rows of 4 numbers") from None
    if m.shape != (4, 4):
        raise ValueError(f"transform must be a 4x4 matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("transform contains NaN or infinite values")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(f"transform's last row must be [0, 0, 0, 1] (affine), got {m[3].tolist()}")
    return m


def check_matrix(matrix: np.ndarray) -> np.ndarray:
    """The matrix as float64 ``[4, 4]``; ValueError if it is not a usable affine edit transform (an affine matrix,
    :func:`check_affine`, whose scale lies within [MIN_SCALE, MAX_SCALE] along every axis)."""
    m = check_affine(matrix)
    singular = np.linalg.svd(m[:3, :3], compute_uv=False)
    if singular.min() < MIN_SCALE or singular.max() > MAX_SCALE:
        raise ValueError(f"transform's scale must lie within [{MIN_SCALE}, {MAX_SCALE}] along every axis "
                         f"(got singular values {np.round(singular, 6).tolist()}); degenerate or extreme scaling")
    return m


def is_identity(matrix: np.ndarray, tolerance: float = IDENTITY_TOLERANCE) -> bool:
    return bool(np.abs(np.asarray(matrix, dtype=np.float64) - np.eye(4)).max() <= tolerance)


def transform_mesh(vertices: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Vertices ``[V, 3]`` moved by the 4x4 affine matrix (column-vector convention), keeping a float dtype."""
    m = check_matrix(matrix)
    v = np.asarray(vertices)
    moved = v.astype(np.float64).reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
    return moved.astype(v.dtype if np.issubdtype(v.dtype, np.floating) else np.float64)
