"""Baking a base-colour texture for a decimated mesh from the full-resolution mesh it was decimated from.

Each texel the decimated mesh's UV atlas covers is a point on the decimated surface; its colour is the
full-resolution mesh's colour at the closest point of that mesh (barycentric interpolation of its vertex
colours, which are the decoder's colour field at its vertices). So the texture keeps the colour detail the
decimation averaged away; ``tests/test_texture_bake.py`` shows this against the colour field itself.
Colours stay sRGB-encoded, as the decoder gives them and as a glTF base-colour texture stores them.
"""

from __future__ import annotations

import numpy as np

from ..postprocess import ColoredMesh
from .atlas import uv_atlas
from .closest import ClosestPoints
from .dilate import fill_gutters
from .raster import rasterize_uv
from .settings import DEFAULT_TEXTURE_SIZE, MAX_TEXTURE_SIZE, MIN_TEXTURE_SIZE


def to_texels(colors: np.ndarray) -> np.ndarray:
    """Colours in [0, 1] as 8-bit texel values."""
    return np.round(np.clip(colors, 0.0, 1.0) * 255).astype(np.uint8)


def bake_texture(mesh: ColoredMesh, source: ColoredMesh, size: int = DEFAULT_TEXTURE_SIZE) -> ColoredMesh:
    """``mesh`` with a UV atlas and a ``size``² base-colour texture sampled from ``source`` (the mesh before
    decimation). Vertices are split along the atlas' seams; every copy keeps its vertex colour."""
    if not MIN_TEXTURE_SIZE <= size <= MAX_TEXTURE_SIZE:
        raise ValueError(f"texture size {size} is outside {MIN_TEXTURE_SIZE}..{MAX_TEXTURE_SIZE}")
    atlas = uv_atlas(mesh.vertices, mesh.faces, size)
    vertices = mesh.vertices[atlas.source]  # [A, 3]
    hits = rasterize_uv(atlas.uvs, atlas.faces, size)
    points = np.einsum("nc,ncx->nx", hits.bary, vertices[atlas.faces[hits.face]])  # [N, 3] texels on the surface
    found = ClosestPoints(source.vertices, source.faces).query(points)
    colors = np.einsum("nc,ncx->nx", found.bary, source.colors[source.faces[found.face]])  # [N, 3]
    texels = np.zeros((size * size, 3), dtype=np.uint8)
    texels[hits.texel] = to_texels(colors)
    covered = np.zeros(size * size, dtype=bool)
    covered[hits.texel] = True
    texture = fill_gutters(texels.reshape(size, size, 3), covered.reshape(size, size))
    return ColoredMesh(vertices, atlas.faces, mesh.colors[atlas.source], uvs=atlas.uvs, texture=texture)
