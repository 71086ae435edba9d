"""The encoded file an image datablock uploads as: what the artist sees, never a stale file on disk."""

from __future__ import annotations

from pathlib import Path

import bpy

from .png import image_png


def image_bytes(image: bpy.types.Image) -> bytes:
    """The encoded file of an image datablock: packed data or the file on disk while they hold what the artist
    sees, else a PNG of its pixels in memory (painted, generated or edited images)."""
    if not image.is_dirty:
        if image.packed_file is not None:
            return bytes(image.packed_file.data)
        path = Path(bpy.path.abspath(image.filepath)) if image.filepath else None
        if path is not None and path.is_file():
            return path.read_bytes()
    return image_png(image)
