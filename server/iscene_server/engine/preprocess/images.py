"""Decoding the job inputs: the scene image and its instance label map.

The semantics follow the I-Scene reference inference code (scene image alpha-composited onto transparent
black, label maps decoded from single-channel, palette, 16-bit or RGB-coded images), plus input checks
that turn bad files into :class:`~iscene_server.errors.InputError`.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from iscene_server.errors import InputError

ImageSource = str | os.PathLike | bytes | bytearray | memoryview

DEFAULT_MAX_PIXELS = 40_000_000
# Relative difference of width/height ratios above which image and label map are rejected.
ASPECT_TOLERANCE = 0.01
# More distinct ids than this means the "label map" is almost certainly a photo or an antialiased drawing.
MAX_INSTANCES = 100

# Errors Pillow raises for unreadable, unsupported or damaged files.
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    zlib.error,
)


@dataclass
class SceneInput:
    """A decoded scene: RGB pixels and instance ids at the label map's resolution."""

    rgb: np.ndarray  # uint8 [H, W, 3]
    ids: np.ndarray  # uint32 [H, W], 0 = background
    label_ids: list[int]  # sorted non-zero ids present in ``ids``

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.ids.shape[1]), int(self.ids.shape[0])


def _describe(source: ImageSource, what: str) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"the {what} data ({len(source)} bytes)"
    return f"the {what} file '{os.fspath(source)}'"


def _read(source: ImageSource, what: str, name: str) -> bytes:
    """The encoded bytes of ``source``; files are read whole so no file handle outlives the call."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise InputError(f"{name} {problem}", f"check the path of the {what}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{name} could not be read ({exc.strerror or exc})", f"check the {what}'s file") from exc


def _too_large(name: str, what: str, exc: Exception) -> InputError:
    return InputError(f"{name} is far too large to decode ({exc})", f"downscale the {what}")


def _open_lazily(data: bytes, what: str, name: str) -> Image.Image:
    """``Image.open`` (reads the header only), with its errors turned into InputError."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise _too_large(name, what, exc) from exc
    except _DECODE_ERRORS as exc:
        detail = "unknown or damaged format" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise InputError(
            f"{name} is not a readable image ({detail})",
            f"save the {what} as PNG (or another common format) and try again",
        ) from exc


def header_pixels(data: bytes) -> int:
    """The pixel count an encoded image declares in its header (0 when it has no readable header: decoding it
    fails later with the full explanation). Only the header is read."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width * img.height
    except (Image.DecompressionBombError, *_DECODE_ERRORS):
        return 0


def open_image(source: ImageSource, *, what: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image given as a path or as encoded bytes.

    ``what`` ("image", "label map") names the input in error messages. The pixel count is checked from the
    header before any pixel is decoded; the decode is forced here so that truncated files fail here too.
    """
    name = _describe(source, what)
    img = _open_lazily(_read(source, what, name), what, name)
    width, height = img.size
    if width * height > max_pixels:
        raise InputError(
            f"{name} is {width}×{height} ({width * height:,} pixels), over the limit of {max_pixels:,} pixels",
            f"downscale the {what}; each object is processed at 518×518, so a few megapixels are plenty",
        )
    if width * height == 0:
        raise InputError(f"{name} is empty ({width}×{height})", f"export the {what} again")
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise _too_large(name, what, exc) from exc
    except _DECODE_ERRORS as exc:
        raise InputError(
            f"{name} could not be decoded: it is truncated or damaged ({exc})", f"export the {what} again"
        ) from exc
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB version of the scene image; transparent pixels become black (reference semantics).

    Images with an alpha channel or a transparency key are composited onto a fully transparent black
    background first, which keeps the colour of visible pixels and zeroes fully transparent ones.
    """
    if img.mode in ("RGBA", "LA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 0))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


MAX_ID = 2 ** 32 - 1


def integer_ids(values: np.ndarray) -> np.ndarray:
    """``values`` (one channel, any numeric dtype) as ``uint32`` ids, or an :class:`InputError` naming the fix
    when they are not all whole numbers in ``[0, 2^32)``."""
    hint = "save the label map with whole-number ids >= 0 (8- or 16-bit PNG, or a palette PNG), not as float data"
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise InputError("the label map holds NaN or infinite values", hint)
        if (values != np.floor(values)).any():
            raise InputError("the label map holds fractional values; ids must be whole numbers", hint)
    elif values.dtype.kind not in "iub":
        raise InputError(f"the label map's pixels are {values.dtype} values, not ids", hint)
    if values.size and values.min() < 0:
        raise InputError(f"the label map holds negative values (down to {values.min():g}); ids must be >= 0", hint)
    if values.size and values.max() > MAX_ID:
        raise InputError(f"the label map holds values over {MAX_ID}", hint)
    return values.astype(np.uint32)


def decode_label_map(img: Image.Image) -> np.ndarray:
    """Instance ids ``uint32 [H, W]`` from a label-map image (0 = background).

    * single-channel images (L, P: the palette indices are the ids, I;16, I, 1): the values;
    * multi-channel images (only the first three channels count): grey (R = G = B everywhere) → R,
      otherwise the colour is the id: ``R + G·256 + B·65536``.

    Single-channel values must be whole numbers in ``[0, 2^32)``: floats with a fraction, NaN and negative
    values are refused (:func:`integer_ids`) instead of being wrapped or truncated into other ids.

    The reference picks between ``R + G·256`` and ``R + G·256 + B·65536``; the two are equal whenever it
    would pick the first (blue all zero), so the packed form is returned directly.
    """
    arr = np.array(img)
    if arr.ndim == 2:
        return integer_ids(arr)
    if arr.ndim != 3:
        return np.zeros(arr.shape[:2], dtype=np.uint32)
    channels = arr[..., :3].astype(np.uint32)
    r = channels[..., 0]
    if channels.shape[-1] == 1:
        return r
    g = channels[..., 1]
    b = channels[..., 2] if channels.shape[-1] > 2 else np.zeros_like(r)
    if np.array_equal(r, g) and np.array_equal(r, b):
        return r
    return r + (g << 8) + (b << 16)


def _check_aspect(image_size: tuple[int, int], label_size: tuple[int, int]) -> None:
    (iw, ih), (lw, lh) = image_size, label_size
    if abs((iw / ih) / (lw / lh) - 1.0) > ASPECT_TOLERANCE:
        raise InputError(
            f"the image is {iw}×{ih} but the label map is {lw}×{lh}: their aspect ratios differ",
            "the label map must be painted on the same image (the same framing; a scaled copy is fine)",
        )


def scene_from_arrays(rgb: np.ndarray, ids: np.ndarray) -> SceneInput:
    """A :class:`SceneInput` from already-decoded arrays of the same height and width."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    ids = np.ascontiguousarray(ids, dtype=np.uint32)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or ids.shape != rgb.shape[:2]:
        raise ValueError(f"expected rgb [H, W, 3] and ids [H, W], got {rgb.shape} and {ids.shape}")
    present = np.unique(ids)
    label_ids = [int(v) for v in present if v != 0]
    if not label_ids:
        raise InputError(
            "the label map has no instances (all pixels are 0)",
            "paint each object with its own id > 0, or run segmentation first",
        )
    if len(label_ids) > MAX_INSTANCES:
        raise InputError(
            f"the label map has {len(label_ids)} distinct ids, more than the {MAX_INSTANCES} objects one scene "
            "can hold: it looks like a photo or an antialiased drawing, not a label map",
            "paint each object with one flat id (no antialiasing, no JPEG) and save it as PNG",
        )
    return SceneInput(rgb=rgb, ids=ids, label_ids=label_ids)


def load_scene(
    image_source: ImageSource, labels_source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> SceneInput:
    """Decode a scene image and its label map; the image is brought to the label map's size.

    A resize (Pillow's default resampling, as in the reference) is only done when the sizes differ, and
    only allowed when the aspect ratios agree within 1%.
    """
    image = open_image(image_source, what="image", max_pixels=max_pixels)
    labels = open_image(labels_source, what="label map", max_pixels=max_pixels)
    ids = decode_label_map(labels)
    rgb = to_rgb(image)
    if rgb.size != labels.size:
        _check_aspect(rgb.size, labels.size)
        rgb = rgb.resize(labels.size)
    return scene_from_arrays(np.asarray(rgb), ids)
