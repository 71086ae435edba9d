"""Reading a texture the way a renderer does: bilinear filtering at UVs, and the box-filtered mip chain."""

from __future__ import annotations

import numpy as np


def sample_bilinear(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Bilinearly filtered colours ``[N, C]`` in [0, 1] of the 8-bit ``texture [H, W, C]`` at ``uvs [N, 2]``
    (glTF's convention: texel centres at ((c + ½) / W, (r + ½) / H), clamped at the border)."""
    height, width = texture.shape[:2]
    x = np.clip(np.asarray(uvs[:, 0], dtype=np.float64) * width - 0.5, 0, width - 1)  # [N] in texel centres
    y = np.clip(np.asarray(uvs[:, 1], dtype=np.float64) * height - 0.5, 0, height - 1)
    x0 = np.clip(np.floor(x).astype(np.int64), 0, max(width - 2, 0))  # [N] left / top texel of the 2×2 block
    y0 = np.clip(np.floor(y).astype(np.int64), 0, max(height - 2, 0))
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]  # [N, 1]
    t = texture.astype(np.float64) / 255
    top = t[y0, x0] * (1 - fx) + t[y0, x1] * fx
    bottom = t[y1, x0] * (1 - fx) + t[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def mip_level(texture: np.ndarray, level: int) -> np.ndarray:
    """Mip ``level`` of ``texture [H, W, C]`` (H and W divisible by 2**level): each level averages 2×2 blocks
    of the one below, as renderers build mip chains."""
    image = texture.astype(np.float64)
    for _ in range(level):
        height, width = image.shape[:2]
        image = image.reshape(height // 2, 2, width // 2, 2, -1).mean(axis=(1, 3))
    return np.round(image).astype(np.uint8)
