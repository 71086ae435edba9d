"""The texture bake per object at release sizes, on this machine's CPU, stage by stage.

    python bench/texture_bench.py [--dense-subdivisions 8] [--faces 50000] [--size 1024] [--repeats 3]

A bumpy sphere of ~1.3M faces (``--dense-subdivisions 8``; FlexiCubes extracts about that at 256³) carrying an
analytic colour field is decimated to ``--faces`` and baked at ``--size``²; each stage of
``geometry/texture/bake.py`` is timed (median of ``--repeats``), then the whole ``bake_texture`` call and the
PNG encoding the GLB writer adds. The texture's PSNR against the field at random surface points, and that of
the decimated mesh's vertex colours, are printed too.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def bumpy_sphere(subdivisions: int):
    """An icosphere with radial bumps and a colour field finer than the decimated mesh's triangles."""
    import numpy as np
    import trimesh

    from iscene_server.geometry.postprocess import ColoredMesh

    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.4)
    unit = np.asarray(sphere.vertices)
    vertices = unit * (1 + 0.08 * np.sin(5 * unit[:, :1]) * np.cos(4 * unit[:, 1:2]))
    return ColoredMesh(vertices, sphere.faces, colour_field(vertices))


def colour_field(points):
    import numpy as np

    return 0.5 + 0.4 * np.sin(2 * np.pi * 6 * points + np.array([0.0, 2.1, 4.2]))


def median_time(function, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense-subdivisions", type=int, default=8)
    parser.add_argument("--faces", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np

    from iscene_server.geometry.glb_writer import png_bytes
    from iscene_server.geometry.postprocess import decimate
    from iscene_server.geometry.texture.atlas import uv_atlas
    from iscene_server.geometry.texture.bake import bake_texture
    from iscene_server.geometry.texture.closest import ClosestPoints
    from iscene_server.geometry.texture.dilate import fill_gutters
    from iscene_server.geometry.texture.raster import rasterize_uv
    from iscene_server.geometry.texture.sampling import sample_bilinear

    dense = bumpy_sphere(args.dense_subdivisions)
    mesh = decimate(dense, args.faces)
    size = args.size
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"dense {dense.face_count:,} faces -> {mesh.face_count:,}, texture {size}²")

    stages = {}
    stages["atlas"], atlas = median_time(lambda: uv_atlas(mesh.vertices, mesh.faces, size), args.repeats)
    stages["raster"], hits = median_time(lambda: rasterize_uv(atlas.uvs, atlas.faces, size), args.repeats)
    points = np.einsum("nc,ncx->nx", hits.bary, mesh.vertices[atlas.source][atlas.faces[hits.face]])
    stages["closest: tree"], finder = median_time(lambda: ClosestPoints(dense.vertices, dense.faces), args.repeats)
    stages["closest: query"], _ = median_time(lambda: finder.query(points), args.repeats)
    covered = np.zeros((size, size), bool)
    covered.reshape(-1)[hits.texel] = True
    image = np.zeros((size, size, 3), np.uint8)
    stages["gutter fill"], _ = median_time(lambda: fill_gutters(image, covered), args.repeats)
    stages["bake_texture (all)"], baked = median_time(lambda: bake_texture(mesh, dense, size), args.repeats)
    stages["PNG encoding (export)"], png = median_time(lambda: png_bytes(baked.texture), args.repeats)
    for name, seconds in stages.items():
        print(f"  {name:24s} {seconds:7.3f} s")
    print(f"  covered texels {len(hits.texel):,} of {size * size:,}; PNG {len(png) / 1e6:.2f} MB")

    rng = np.random.default_rng(0)
    corners = baked.vertices[baked.faces].astype(np.float64)
    area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    faces = rng.choice(len(area), 50_000, p=area / area.sum())
    bary = rng.dirichlet([1.0, 1.0, 1.0], len(faces))
    surface = np.einsum("nc,ncx->nx", bary, corners[faces])
    truth = colour_field(surface)  # the field at the decimated surface point (the dense mesh is within its error)
    textured = sample_bilinear(baked.texture, np.einsum("nc,ncx->nx", bary, baked.uvs[baked.faces[faces]]))
    vertex = np.einsum("nc,ncx->nx", bary, baked.colors[baked.faces[faces]])
    for name, colours in (("texture", textured), ("vertex colours", vertex)):
        print(f"  PSNR {name:15s} {10 * np.log10(1 / np.mean((colours - truth) ** 2)):5.1f} dB")


if __name__ == "__main__":
    main()
