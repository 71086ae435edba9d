"""PNG bytes of an image datablock's pixels as they are in memory (painted, generated or edited), and the colours
of a baked texture at a mesh's UVs (Blender decodes the packed PNG; Blender's Python has no Pillow).

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


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """Linear values of sRGB-encoded ones in [0, 1]: a deliberate copy of the server's ``srgb_to_linear``
    (``iscene_server/geometry/colour.py``), checked against it by ``tests/test_addon_copies.py``."""
    values = np.clip(values, 0.0, 1.0)
    return np.where(values <= 0.04045, values / 12.92, np.power((values + 0.055) / 1.055, 2.4))


def sample_bilinear(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Bilinearly filtered values ``[N, C]`` of ``texture [H, W, C]`` (in [0, 1], first row at the top) at glTF
    ``uvs [N, 2]`` (texel centres at ((c + 0.5) / W, (r + 0.5) / H), clamped at the border): a deliberate copy
    of the server's ``sample_bilinear`` (``iscene_server/geometry/texture/sampling.py``, which takes 8-bit
    texels), checked against it by ``tests/test_addon_copies.py``."""
    height, width = texture.shape[:2]
    x = np.clip(np.asarray(uvs[:, 0], np.float64) * width - 0.5, 0, width - 1)  # [N] in texel centres
    y = np.clip(np.asarray(uvs[:, 1], np.float64) * height - 0.5, 0, height - 1)
    x0 = np.clip(np.floor(x).astype(np.int64), 0, max(width - 2, 0))  # [N] left / top texel of the 2x2 block
    y0 = np.clip(np.floor(y).astype(np.int64), 0, max(height - 2, 0))
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]  # [N, 1]
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def texture_colours(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Linear RGBA ``[N, 4]`` (float32, alpha 1) of the sRGB ``texture [H, W, >=3]`` (in [0, 1], first row at the
    top) at glTF ``uvs [N, 2]``: the vertex colours of a baked mesh whose GLB has no ``COLOR_0``."""
    rgb = srgb_to_linear(sample_bilinear(texture[..., :3], uvs))  # [N, 3]
    return np.concatenate([rgb, np.ones((len(rgb), 1))], axis=1).astype(np.float32)


def image_rows(image) -> np.ndarray:
    """The pixels of a ``bpy.types.Image`` as float32 ``[H, W, 4]``, first row at the top. Byte images (a packed
    PNG) hold their stored values / 255, float images linear values."""
    width, height = image.size
    if not width or not height:
        raise RuntimeError(f"the image {image.name!r} has no pixels in memory; save it to a file first")
    pixels = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(pixels)
    return pixels.reshape(height, width, 4)[::-1]  # Blender stores the bottom row first


def image_png(image) -> bytes:
    """The pixels of a ``bpy.types.Image`` as PNG. Float images hold linear values and are encoded as sRGB,
    unless they are non-colour data (label maps); byte images are encoded as stored."""
    rgba = image_rows(image)
    if image.is_float and image.colorspace_settings.name not in ("Non-Color", "Raw"):
        rgba = np.concatenate([linear_to_srgb(rgba[..., :3]), rgba[..., 3:]], axis=-1)
    return encode_rgba8(np.round(np.clip(rgba, 0.0, 1.0) * 255).astype(np.uint8))
