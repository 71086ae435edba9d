"""sRGB transfer functions (IEC 61966-2-1), both ways, on colours in [0, 1]."""

from __future__ import annotations

import numpy as np


def srgb_to_linear(colors: np.ndarray) -> np.ndarray:
    """Decode sRGB: glTF vertex colours are linear, the decoder's colours are sRGB-encoded."""
    c = np.clip(np.asarray(colors, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(colors: np.ndarray) -> np.ndarray:
    """Encode linear colours as sRGB (the inverse of :func:`srgb_to_linear`)."""
    c = np.clip(np.asarray(colors, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)
