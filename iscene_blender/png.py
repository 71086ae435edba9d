"""PNG bytes of an image datablock's pixels as they are in memory (painted, generated or edited).

``Image.save`` would do this too, but it marks the image as saved while its file on disk still holds the old
pixels, so Blender would later drop the artist's unsaved paint; encoding here leaves the datablock untouched.
The encoder is the add-on's own (the server decodes with Pillow, ``iscene_server/engine/preprocess/images.py``);
``tests/test_addon_copies.py`` checks that the server reads its files back as the same pixels and ids.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_rgba8(rgba: np.ndarray) -> bytes:
    """An 8-bit RGBA PNG of ``rgba`` (uint8 ``[H, W, 4]``, first row at the top)."""
    height, width = rgba.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgba.reshape(height, width * 4)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + _chunk(b"IEND", b""))


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """sRGB encoding of linear values in [0, 1]: a deliberate copy of the server's ``linear_to_srgb``
    (``iscene_server/geometry/colour.py``), checked against it by ``tests/test_addon_copies.py``."""
    values = np.clip(values, 0.0, 1.0)
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * np.power(values, 1 / 2.4) - 0.055)


def image_png(image) -> bytes:
    """The pixels of a ``bpy.types.Image`` as PNG. Float images hold linear values and are encoded as sRGB,
    unless they are non-colour data (label maps); byte images are encoded as stored."""
    width, height = image.size
    if not width or not height:
        raise RuntimeError(f"the image {image.name!r} has no pixels in memory; save it to a file first")
    pixels = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(pixels)
    rgba = pixels.reshape(height, width, 4)[::-1]  # Blender stores the bottom row first
    if image.is_float and image.colorspace_settings.name not in ("Non-Color", "Raw"):
        rgba = np.concatenate([linear_to_srgb(rgba[..., :3]), rgba[..., 3:]], axis=-1)
    return encode_rgba8(np.round(np.clip(rgba, 0.0, 1.0) * 255).astype(np.uint8))
