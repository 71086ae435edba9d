"""Gutter fill: every texel no triangle covers takes the colour of the nearest covered texel.

Bilinear filtering reads the texels around a sample point and each mip level averages blocks of the one below,
so texels outside the charts do get read near seams; filling *all* of them (not just a few rings) with their
nearest chart colour means no filter, at any mip level, ever mixes in a background colour.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt


def fill_gutters(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """``image [H, W, C]`` with every texel where ``covered [H, W]`` is false replaced by the nearest covered
    texel's value (Euclidean distance; ties broken by scipy's fixed scan order, so the result is deterministic)."""
    if not covered.any():
        raise ValueError("no texel is covered: nothing to fill the gutters from")
    if covered.all():
        return image
    _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)  # [H, W] each: nearest covered texel
    return image[rows, cols]
