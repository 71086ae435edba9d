"""A UV atlas of a triangle mesh with xatlas: charts cut along seams, flattened and packed into one square.

Seams split vertices, so the atlas has its own vertex list: each atlas vertex copies one input vertex
(``source``) and carries one UV. The faces keep the input's order. The result depends only on the input
arrays (xatlas is deterministic for a given mesh and options).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xatlas

CHART_BOUNDARY = 0.35
"""Longest chart boundary as a fraction of the mesh's bounding-box diagonal. Unbounded charts make xatlas grow
and re-fit few large charts, about 7 s for 50k faces; this bound gives a few hundred charts in under 1 s with
the same packing efficiency (measured in bench/texture_bench.py)."""

PADDING_TEXELS = 2  # empty texels between charts at xatlas' resolution (≥ our texture's), so bilinear stays in one


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class UvAtlas:
    """Atlas vertices (copies of input vertices, split at seams), their UVs and the faces over them."""

    source: np.ndarray  # int64 [A] input vertex each atlas vertex copies
    uvs: np.ndarray  # float32 [A, 2] in [0, 1]; u right, v down (row 0 of the image at v = 0, as glTF)
    faces: np.ndarray  # int64 [F, 3] into the atlas vertices, in the input's face order


def uv_atlas(vertices: np.ndarray, faces: np.ndarray, resolution: int) -> UvAtlas:
    """The atlas of ``vertices [V, 3]`` / ``faces [F, 3]`` packed for a ``resolution``² texture."""
    vertices = np.ascontiguousarray(vertices, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.uint32)
    if len(faces) == 0:
        raise ValueError("cannot make a UV atlas of a mesh without faces")
    diagonal = float(np.linalg.norm(vertices.max(0) - vertices.min(0)))
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices, faces)
    charts = xatlas.ChartOptions()
    charts.max_iterations = 0  # one chart-growing pass: further passes cost seconds and change little
    charts.max_boundary_length = CHART_BOUNDARY * diagonal
    packing = xatlas.PackOptions()
    packing.resolution = int(resolution)
    packing.padding = PADDING_TEXELS
    packing.bilinear = True
    packing.blockAlign = True
    atlas.generate(charts, packing)
    if atlas.atlas_count != 1:
        raise ValueError(f"xatlas packed the mesh into {atlas.atlas_count} atlases, expected one")
    source, atlas_faces, uvs = atlas[0]
    return UvAtlas(np.asarray(source, dtype=np.int64), np.clip(np.asarray(uvs, dtype=np.float32), 0.0, 1.0),
                   np.asarray(atlas_faces, dtype=np.int64))
