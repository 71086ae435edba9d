"""The texture bake's parts: closest points on triangles, UV rasterisation, the gutter fill, the atlas,
bilinear sampling and mip levels."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from iscene_server.geometry.postprocess import ColoredMesh, decimate
from iscene_server.geometry.texture import closest
from iscene_server.geometry.texture.atlas import uv_atlas
from iscene_server.geometry.texture.bake import bake_texture
from iscene_server.geometry.texture.closest import ClosestPoints, closest_on_triangles
from iscene_server.geometry.texture.dilate import fill_gutters
from iscene_server.geometry.texture.raster import rasterize_uv
from iscene_server.geometry.texture.sampling import mip_level, sample_bilinear


def brute_force_closest(p: np.ndarray, tri: np.ndarray, steps: int = 400) -> np.ndarray:
    """The closest of a fine lattice of points on the triangle ``tri [3, 3]`` to ``p [3]``."""
    i, j = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    bary = np.stack([1 - (i[keep] + j[keep]) / steps, i[keep] / steps, j[keep] / steps], axis=1)
    points = bary @ tri
    return points[np.argmin(((points - p) ** 2).sum(1))]


def test_closest_point_on_triangle_matches_brute_force_in_every_region():
    rng = np.random.default_rng(0)
    tri = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.8, 0.0]])
    # beyond each vertex, beyond each edge, above the face: every branch of the region test
    probes = np.array([[-0.5, -0.5, 0.3], [1.6, -0.2, -0.2], [0.1, 1.5, 0.4], [0.5, -0.6, 0.1],
                       [0.9, 0.7, -0.3], [-0.4, 0.5, 0.2], [0.4, 0.3, 0.7]])
    probes = np.concatenate([probes, rng.normal(0.4, 0.8, (30, 3))])
    bary = closest_on_triangles(probes, *(np.broadcast_to(c, probes.shape) for c in tri))
    assert np.allclose(bary.sum(1), 1.0) and (bary >= 0).all()
    for p, weights in zip(probes, bary, strict=True):
        expected = brute_force_closest(p, tri)
        assert np.linalg.norm(weights @ tri - p) <= np.linalg.norm(expected - p) + 1e-6


@pytest.mark.parametrize("chunk", [None, 7])
def test_closest_points_on_a_mesh_match_an_exhaustive_search(chunk, monkeypatch):
    """The k-d tree's candidate triangles find the closest point an exhaustive search over every face finds,
    also when the points are split into many chunks (answered in threads, each written back to its own rows)."""
    if chunk is not None:
        monkeypatch.setattr(closest, "POINTS_PER_CHUNK", chunk)
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    vertices, faces = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(200, 3))
    probes = directions / np.linalg.norm(directions, axis=1, keepdims=True) * rng.uniform(0.97, 1.03, (200, 1))
    found = ClosestPoints(vertices, faces).query(probes)
    points = np.einsum("nc,ncx->nx", found.bary, vertices[faces[found.face]])
    corners = vertices[faces]  # [F, 3, 3]
    shape = (len(probes), len(faces), 3)
    every = closest_on_triangles(np.broadcast_to(probes[:, None], shape), *(np.broadcast_to(corners[None, :, k], shape)
                                                                          for k in range(3)))  # [N, F, 3]
    exhaustive = np.linalg.norm(np.einsum("nfc,fcx->nfx", every, corners) - probes[:, None], axis=2).min(1)
    assert np.allclose(np.linalg.norm(points - probes, axis=1), exhaustive, atol=1e-6)


def test_rasterising_two_triangles_covering_the_square_hits_every_texel_once():
    uvs = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    hits = rasterize_uv(uvs, faces, 16)
    assert np.array_equal(hits.texel, np.arange(256))
    centres = np.stack([(hits.texel % 16 + 0.5) / 16, (hits.texel // 16 + 0.5) / 16], axis=1)
    assert np.allclose(np.einsum("nc,ncx->nx", hits.bary, uvs[faces[hits.face]]), centres, atol=1e-6)
    below = centres[:, 1] < centres[:, 0]  # under the diagonal (u > v) only the first triangle can hold the centre
    assert (hits.face[below] == 0).all() and (hits.face[centres[:, 1] > centres[:, 0]] == 1).all()


def test_rasterising_a_small_triangle_keeps_only_centres_inside():
    uvs = np.array([[0.1, 0.1], [0.4, 0.1], [0.1, 0.4]])
    hits = rasterize_uv(uvs, np.array([[0, 1, 2]]), 10)
    rows, cols = np.divmod(hits.texel, 10)
    u, v = (cols + 0.5) / 10, (rows + 0.5) / 10
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1)]
    assert (u + v <= 0.5 + 1e-9).all()


def test_gutter_fill_copies_the_nearest_covered_texel_everywhere():
    image = np.zeros((6, 6, 3), np.uint8)
    covered = np.zeros((6, 6), bool)
    image[1, 1], covered[1, 1] = (200, 10, 10), True
    image[4, 4], covered[4, 4] = (10, 200, 10), True
    filled = fill_gutters(image, covered)
    assert (filled[0, 0] == (200, 10, 10)).all() and (filled[5, 5] == (10, 200, 10)).all()
    assert (filled[1, 1] == image[1, 1]).all() and not (filled == 0).all(axis=2).any()
    with pytest.raises(ValueError, match="no texel"):
        fill_gutters(image, np.zeros((6, 6), bool))


@pytest.fixture(scope="module")
def blob():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    vertices = sphere.vertices * (1 + 0.2 * np.sin(6 * sphere.vertices[:, :1]))
    return ColoredMesh(vertices, sphere.faces, np.full_like(vertices, 0.6))


def test_atlas_is_deterministic_and_charts_do_not_overlap(blob):
    first, second = uv_atlas(blob.vertices, blob.faces, 512), uv_atlas(blob.vertices, blob.faces, 512)
    assert np.array_equal(first.uvs, second.uvs) and np.array_equal(first.faces, second.faces)
    assert np.array_equal(blob.vertices[first.source][first.faces], blob.vertices[blob.faces])  # same triangles
    assert first.uvs.min() >= 0 and first.uvs.max() <= 1
    corners = first.uvs[first.faces] * 512
    area = 0.5 * np.abs(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]))
    hits = rasterize_uv(first.uvs, first.faces, 512)
    assert len(hits.texel) > 0.9 * area.sum()  # texels counted once: overlapping charts would lose area here


def test_bake_rejects_sizes_outside_the_range(blob):
    with pytest.raises(ValueError, match=r"outside 512\.\.4096"):
        bake_texture(blob, blob, 256)


def test_baked_mesh_of_a_constant_colour_is_that_colour_everywhere(blob):
    coarse = decimate(blob, 300)
    baked = bake_texture(coarse, blob, 512)
    assert baked.textured and baked.uvs.shape == (baked.vertex_count, 2)
    assert (baked.texture == 153).all()  # 0.6 × 255


def test_bilinear_sampling_and_mip_levels():
    texture = np.zeros((4, 4, 1), np.uint8)
    texture[:, 2:] = 255
    centres = np.array([[0.125, 0.5], [0.375, 0.5], [0.5, 0.5], [0.625, 0.5], [0.0, 0.0], [1.0, 1.0]])
    assert np.allclose(sample_bilinear(texture, centres)[:, 0], [0, 0, 0.5, 1, 0, 1])
    assert mip_level(texture, 1)[:, :, 0].tolist() == [[0, 255], [0, 255]]
    assert mip_level(texture, 2)[0, 0, 0] == 128
