"""OpenCV-compatible 8-tap Lanczos resize (``cv2.resize(..., interpolation=cv2.INTER_LANCZOS4)``) in numpy.

The I-Scene reference resizes its float32 slot images with OpenCV. OpenCV is not a dependency of this
project, so the same algorithm is reproduced here:

* separable: a horizontal pass over every source row, then a vertical pass, both in float32;
* source coordinate of destination index ``d``: ``f = float32((d + 0.5) * scale - 0.5)`` with
  ``scale = 1 / (dst / src)`` computed in double; taps ``floor(f) - 3 … floor(f) + 4``, clamped to the
  image (replicated border); the same 8 taps when downscaling (no antialiasing);
* weights: the windowed sinc evaluated through the sine addition formula, normalised to sum to 1
  (see :func:`lanczos4_weights`).

* an image whose size does not change is copied unchanged.

The summation order also follows OpenCV's float32 code path (see :func:`_vertical_pass`); against
opencv-python-headless 5.0.0 on x86-64 the results are bit-identical. Another order would only differ by a
few float32 ulps. No clipping is done here: callers clip.
"""

from __future__ import annotations

import math

import numpy as np

TAPS = 8
_AT_SAMPLE = np.float32(1e-6)
_AT_SAMPLE_WEIGHT = 1e30
_S45 = 0.70710678118654752440084436210485
# Tap i's numerator is sin(y0 - 3*i*pi/4) = cs[i][0]*sin(y0) + cs[i][1]*cos(y0).
_CS = np.array(
    [(1, 0), (-_S45, -_S45), (0, 1), (_S45, -_S45), (-1, 0), (_S45, _S45), (0, -1), (-_S45, _S45)],
    dtype=np.float64,
)
# OpenCV's float32 vertical pass handles each row in SIMD chunks of this many floats, then a scalar tail.
_SIMD_LANES = 4


def lanczos4_weights(frac: np.ndarray) -> np.ndarray:
    """Normalised float32 tap weights ``[n, 8]`` for fractional offsets ``frac`` (float32, in [0, 1)).

    Tap ``i`` sits at distance ``frac + 3 - i`` from the sample point; ``frac + 3`` and ``frac + 3 - i`` are
    formed in float32 (as OpenCV does), the sines and the division in double. Only ``sin(pi*t/4)`` of the
    kernel's two sines is evaluated per tap: the other, ``sin(pi*t)``, has the same magnitude for all 8 taps
    and cancels in the normalisation. Each coefficient is rounded to float32, summed in float32 and scaled
    by ``float32(1 / sum)``. A tap closer than 1e-6 to the sample point gets the weight 1e30 before the
    normalisation, so ``frac = 0`` gives ``[~1e-31, …, 1, …, ~1e-31]`` (not an exact 0/1 vector; OpenCV 5
    behaves the same way).
    """
    x = np.asarray(frac, dtype=np.float32).reshape(-1)
    x3 = x + np.float32(3)
    y0 = -x3.astype(np.float64) * math.pi * 0.25
    dist = x3[:, None] - np.arange(TAPS, dtype=np.float32)[None, :]
    at_sample = np.abs(dist) < _AT_SAMPLE
    y = -dist.astype(np.float64) * math.pi * 0.25
    numer = _CS[None, :, 0] * np.sin(y0)[:, None] + _CS[None, :, 1] * np.cos(y0)[:, None]
    y2 = np.where(at_sample, 1.0, y * y)
    coeffs = np.where(at_sample, _AT_SAMPLE_WEIGHT, numer / y2).astype(np.float32)

    total = coeffs[:, 0].copy()
    for i in range(1, TAPS):
        total += coeffs[:, i]
    return coeffs * (np.float32(1) / total)[:, None]


def _axis_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Source tap indices ``[dst, 8]`` (clamped) and their float32 weights ``[dst, 8]`` for one axis."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(f)
    frac = f - start
    index = start.astype(np.int64)[:, None] + np.arange(-3, TAPS - 3)[None, :]
    return np.clip(index, 0, src - 1), lanczos4_weights(frac)


def _horizontal_pass(img: np.ndarray, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Resample axis 1: taps accumulated first to last in float32."""
    trailing = (None,) * (img.ndim - 2)
    out = img[:, index[:, 0]] * weights[(slice(None), 0) + trailing]
    for j in range(1, TAPS):
        out += img[:, index[:, j]] * weights[(slice(None), j) + trailing]
    return out


def _vertical_pass(img: np.ndarray, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Resample axis 0 with OpenCV's float32 summation order.

    Each destination row is a flat run of ``width * channels`` floats. OpenCV's SIMD loop covers the
    longest prefix that is a multiple of 4 floats and sums the taps from the last to the first; the
    remaining floats of the row go through its scalar loop, which sums from the first to the last.
    """
    dst_rows = index.shape[0]
    flat = img.reshape(img.shape[0], -1)
    width = flat.shape[1]
    split = width - width % _SIMD_LANES

    rows = [(flat[index[:, j]], weights[:, j][:, None]) for j in range(TAPS)]
    out = np.empty((dst_rows, width), dtype=np.float32)
    head = out[:, :split]
    np.multiply(rows[TAPS - 1][0][:, :split], rows[TAPS - 1][1], out=head)
    for j in range(TAPS - 2, -1, -1):
        head += rows[j][0][:, :split] * rows[j][1]
    if split < width:
        tail = rows[0][0][:, split:] * rows[0][1]
        for j in range(1, TAPS):
            tail += rows[j][0][:, split:] * rows[j][1]
        out[:, split:] = tail
    return out.reshape((dst_rows,) + img.shape[1:])


def resize_lanczos4(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float32 image ``[H, W]`` or ``[H, W, C]`` to ``size = (width, height)`` like OpenCV's
    ``INTER_LANCZOS4``. Returns a new float32 array; values are not clipped."""
    src = np.asarray(img)
    if src.ndim not in (2, 3):
        raise ValueError(f"expected an [H, W] or [H, W, C] array, got shape {src.shape}")
    return resize_lanczos4_rows(src, 0, src.shape[0], size)


def resize_lanczos4_rows(band: np.ndarray, top: int, height: int, size: tuple[int, int]) -> np.ndarray:
    """:func:`resize_lanczos4` of an image of ``height`` rows that is zero outside the rows
    ``top … top + len(band) - 1``, given only those rows (``band``).

    Zero rows resample to zero, so they are not computed; the result equals resizing the zero-padded
    image (up to the sign of zeros). This keeps masked slot images cheap when the mask covers a small part
    of a large frame.
    """
    band = np.asarray(band)
    if band.ndim not in (2, 3) or band.shape[0] == 0 or band.shape[1] == 0:
        raise ValueError(f"expected a non-empty [H, W] or [H, W, C] array, got shape {band.shape}")
    if top < 0 or top + band.shape[0] > height:
        raise ValueError(f"rows {top}…{top + band.shape[0] - 1} do not fit in an image of {height} rows")
    dst_w, dst_h = (int(v) for v in size)
    if dst_w <= 0 or dst_h <= 0:
        raise ValueError(f"target size must be positive, got {size}")
    band = band.astype(np.float32, copy=False)
    src_w = band.shape[1]

    if (dst_w, dst_h) == (src_w, height):  # OpenCV copies an image whose size does not change
        padded = np.zeros((height,) + band.shape[1:], dtype=np.float32)
        padded[top : top + band.shape[0]] = band
        return padded
    rows = _horizontal_pass(band, *_axis_table(src_w, dst_w))
    padded = np.zeros((height,) + rows.shape[1:], dtype=np.float32)
    padded[top : top + band.shape[0]] = rows
    return _vertical_pass(padded, *_axis_table(height, dst_h))
