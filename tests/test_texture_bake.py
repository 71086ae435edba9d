"""The proof of the baked texture (issue 17): a dense mesh carrying an analytic colour field, decimated and
baked, reproduces the field at random surface points far better than the decimated mesh's vertex colours,
shows no background at the atlas seams at any mip level, and the source chosen for the bake (the dense mesh's
colour at the closest surface point) is at least as faithful as the decoder's grid colour field at the point."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy.ndimage import map_coordinates

from iscene_server.geometry.postprocess import ColoredMesh, decimate
from iscene_server.geometry.texture.bake import bake_texture
from iscene_server.geometry.texture.sampling import mip_level, sample_bilinear

RADIUS = 0.4
GRID = 128  # the decoder grid's cells per unit (FlexiCubes' mesh has about one vertex per cell)
WAVES = 6  # colour periods per unit: finer than the decimated mesh's triangles, coarse for the dense mesh's
SIZE = 512
SAMPLES = 20_000


def colour_field(points: np.ndarray) -> np.ndarray:
    """The known pattern: ``[N, 3]`` colours in [0.1, 0.9] of points ``[N, 3]``, a different phase per channel."""
    return 0.5 + 0.4 * np.sin(2 * np.pi * WAVES * points + np.array([0.0, 2.1, 4.2]))


def on_sphere(points: np.ndarray) -> np.ndarray:
    """The true surface's point closest to each point (the dense mesh approximates this sphere)."""
    return RADIUS * points / np.linalg.norm(points, axis=1, keepdims=True)


class GridField:
    """The decoder's kind of colour field: the pattern at the vertices of a GRID³ lattice, trilinear between."""

    def __init__(self):
        axis = np.arange(GRID + 1) / GRID - 0.5
        lattice = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        self.values = colour_field(lattice).reshape(GRID + 1, GRID + 1, GRID + 1, 3)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        index = ((points + 0.5) * GRID).T  # [3, N] lattice coordinates
        return np.stack([map_coordinates(self.values[..., c], index, order=1) for c in range(3)], axis=1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


@pytest.fixture(scope="module")
def scene():
    """The grid field, the dense mesh (colours from the field at its vertices, as FlexiCubes gives them), its
    decimation and the bake."""
    field = GridField()
    sphere = trimesh.creation.icosphere(subdivisions=6, radius=RADIUS)  # 81,920 faces, ~1 grid cell per edge
    dense = ColoredMesh(sphere.vertices, sphere.faces, field(np.asarray(sphere.vertices)))
    decimated = decimate(dense, 2_000)
    return field, dense, decimated, bake_texture(decimated, dense, SIZE)


def surface_samples(mesh: ColoredMesh, rng: np.random.Generator, count: int, on_edges: np.ndarray | None = None):
    """Area-uniform random points of ``mesh``: faces, barycentric coordinates, points [N, 3] and UVs [N, 2]. With
    ``on_edges`` (a [F, 3] mask of the edges opposite each corner to sample on), points lie on those edges."""
    corners = mesh.vertices[mesh.faces].astype(np.float64)
    area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    if on_edges is None:
        faces = rng.choice(len(area), count, p=area / area.sum())
        bary = rng.dirichlet([1.0, 1.0, 1.0], count)
    else:
        face_ids, opposite = np.nonzero(on_edges)
        pick = rng.integers(0, len(face_ids), count)
        faces, opposite = face_ids[pick], opposite[pick]
        t = rng.random(count)
        bary = np.zeros((count, 3))
        rows = np.arange(count)
        bary[rows, (opposite + 1) % 3] = t
        bary[rows, (opposite + 2) % 3] = 1 - t
    points = np.einsum("nc,ncx->nx", bary, corners[faces])
    uvs = np.einsum("nc,ncx->nx", bary, mesh.uvs[mesh.faces[faces]]) if mesh.textured else None
    return faces, bary, points, uvs


def seam_edges(mesh: ColoredMesh) -> np.ndarray:
    """``[F, 3]`` mask of the atlas edges on a chart border (edge opposite corner k): edges whose vertex pair
    belongs to one face only (a seam splits the vertices, so the neighbour's edge uses other copies)."""
    edges = np.stack([mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]], mesh.faces[:, [0, 1]]], axis=1)  # [F, 3, 2]
    keys = np.sort(edges, axis=2).reshape(-1, 2)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    return (counts[inverse.reshape(-1)] == 1).reshape(-1, 3)


def test_texture_reproduces_the_field_and_beats_vertex_colours(scene):
    _, _, decimated, baked = scene
    faces, bary, points, uvs = surface_samples(baked, np.random.default_rng(1), SAMPLES)
    truth = colour_field(on_sphere(points))
    textured = psnr(sample_bilinear(baked.texture, uvs), truth)
    vertex = psnr(np.einsum("nc,ncx->nx", bary, baked.colors[baked.faces[faces]]), truth)
    assert baked.face_count == decimated.face_count
    assert textured >= 30.0, f"texture PSNR {textured:.1f} dB"
    assert textured >= vertex + 3.0, f"texture {textured:.1f} dB vs vertex colours {vertex:.1f} dB"


def test_closest_point_colour_is_at_least_as_faithful_as_the_grid_field(scene):
    """The choice bake.py makes, shown: the grid field sampled at the texels' points (on the decimated surface,
    off the true one) against the dense mesh's colour at the closest point (what the texture holds)."""
    field, _, _, baked = scene
    _, _, points, uvs = surface_samples(baked, np.random.default_rng(2), SAMPLES)
    truth = colour_field(on_sphere(points))
    closest = psnr(sample_bilinear(baked.texture, uvs), truth)
    grid = psnr(field(points), truth)
    assert closest >= grid, f"closest point {closest:.1f} dB vs grid field {grid:.1f} dB"


@pytest.mark.parametrize("level", [0, 2])
def test_seams_show_no_background_at_any_mip_level(scene, level):
    """Points on chart borders, read bilinearly from mip ``level``: they show the surface's colour (within what
    the level's blur allows), never a background texel — every channel of the field lies in [0.1, 0.9]."""
    _, _, _, baked = scene
    seams = seam_edges(baked)
    assert seams.any()
    _, _, points, uvs = surface_samples(baked, np.random.default_rng(3), SAMPLES, on_edges=seams)
    colours = sample_bilinear(mip_level(baked.texture, level), uvs)
    assert colours.min() >= 0.1 - 0.02 and colours.max() <= 0.9 + 0.02
    assert psnr(colours, colour_field(on_sphere(points))) >= (30.0 if level == 0 else 25.0)


def test_bake_is_deterministic(scene):
    _, dense, decimated, baked = scene
    again = bake_texture(decimated, dense, SIZE)
    for name in ("vertices", "faces", "colors", "uvs", "texture"):
        assert np.array_equal(getattr(again, name), getattr(baked, name)), name
