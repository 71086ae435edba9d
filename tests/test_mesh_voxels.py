"""Voxelising meshes into the 64³ grid (geometry/mesh_voxels.py): exact surface cells, filled interiors, clipping."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import trimesh

from iscene_server.geometry.mesh_voxels import voxelise_mesh
from iscene_server.geometry.voxels import GRID, voxel_centres


def to_s(q) -> np.ndarray:
    """Grid-space points -> scene frame S."""
    return np.asarray(q, dtype=np.float64) / GRID - 0.5


def cell_set(coords) -> set[tuple[int, int, int]]:
    return {tuple(int(x) for x in c) for c in coords}


def box_mesh(low, high) -> trimesh.Trimesh:
    """A closed box with grid-space corners ``low``/``high`` (12 triangles)."""
    return trimesh.creation.box(bounds=[to_s(low), to_s(high)])


def cells_between(low, high) -> set[tuple[int, int, int]]:
    """Cells i..j (inclusive) along each axis."""
    return set(itertools.product(*(range(a, b + 1) for a, b in zip(low, high, strict=True))))


def reference_overlap(triangle: np.ndarray, cell) -> bool:
    """Triangle/closed unit-cell overlap by the separating-axis theorem, one pair at a time (independent of the
    vectorised implementation): box axes, the normal, the nine edge x box-axis products."""
    centre = np.asarray(cell, dtype=np.float64) + 0.5
    v = triangle - centre  # [3, 3]
    edges = [v[1] - v[0], v[2] - v[1], v[0] - v[2]]
    axes = [*np.eye(3), np.cross(edges[0], edges[1])]
    axes += [np.cross(e, b) for e in edges for b in np.eye(3)]
    for axis in axes:
        p = v @ axis
        r = 0.5 * np.abs(axis).sum()
        if p.min() > r + 1e-12 or p.max() < -r - 1e-12:
            return False
    return True


def reference_cells(triangle: np.ndarray) -> set[tuple[int, int, int]]:
    """Every cell of the triangle's whole bounding box that the reference test says it overlaps."""
    low, high = np.floor(triangle.min(axis=0)).astype(int) - 1, np.floor(triangle.max(axis=0)).astype(int) + 1
    return {c for c in cells_between(low, high) if reference_overlap(triangle, c)}


def sampled_cells(triangle: np.ndarray, steps: int = 400) -> set[tuple[int, int, int]]:
    """Cells of dense points on the triangle: every one must be marked (a lower bound)."""
    a, b = np.meshgrid(np.linspace(0, 1, steps), np.linspace(0, 1, steps), indexing="ij")
    keep = a + b <= 1
    w = np.stack([1 - a[keep] - b[keep], a[keep], b[keep]], axis=1)  # [N, 3] barycentric
    return cell_set(np.floor(w @ triangle).astype(int))


def voxelise_grid_triangles(triangles: np.ndarray, **kwargs):
    """Voxelise separate triangles ``[T, 3, 3]`` given in grid space."""
    vertices = to_s(triangles.reshape(-1, 3))
    return voxelise_mesh(vertices, np.arange(len(vertices)).reshape(-1, 3), **kwargs)


def test_box_surface_and_interior_are_exactly_the_analytic_cells():
    low, high = np.array([10.5, 12.5, 14.5]), np.array([30.5, 20.5, 40.5])
    result = voxelise_mesh(*(lambda m: (m.vertices, m.faces))(box_mesh(low, high)))
    first, last = np.floor(low).astype(int), np.floor(high).astype(int)  # cell index = floor of the coordinate
    expected_surface = set()
    for axis in range(3):
        for side in (first, last):  # each face: its plane's cell on `axis`, its range's cells on the others
            face_low, face_high = first.copy(), last.copy()
            face_low[axis] = face_high[axis] = side[axis]
            expected_surface |= cells_between(face_low, face_high)
    expected_interior = cells_between(first + 1, last - 1)
    assert cell_set(result.coords) == expected_surface | expected_interior
    assert result.surface == len(expected_surface)
    assert result.filled == len(expected_interior)
    assert not result.clipped
    assert result.coords.dtype == np.int16
    assert np.array_equal(result.coords, np.unique(result.coords, axis=0))  # canonical: sorted, unique


def test_closed_sphere_is_a_shell_near_its_radius_and_filled_inside():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.3)
    result = voxelise_mesh(sphere.vertices, sphere.faces)
    radius = 0.3 * GRID  # cells
    distance = np.linalg.norm(voxel_centres(result.coords.astype(np.float64)), axis=1) * GRID  # [M] cells
    assert distance.max() <= radius + np.sqrt(3) / 2
    every = np.argwhere(np.ones((GRID,) * 3, dtype=bool))
    inner = every[np.linalg.norm(voxel_centres(every.astype(np.float64)), axis=1) * GRID < radius - 1]
    assert cell_set(inner) <= cell_set(result.coords)
    assert result.filled >= len(inner) - result.surface
    assert result.filled + result.surface == len(result.coords)


def test_open_bowl_is_not_filled():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    lower = sphere.vertices[sphere.faces][:, :, 2].max(axis=1) <= 0.05  # the bottom cap and a little more
    result = voxelise_mesh(sphere.vertices, sphere.faces[lower])
    assert result.filled == 0
    assert result.surface == len(result.coords) > 0
    distance = np.linalg.norm(voxel_centres(result.coords.astype(np.float64)), axis=1) * GRID
    assert distance.min() >= 0.3 * GRID - np.sqrt(3) / 2


def plane(z: float, low: float = 5.2, high: float = 40.7) -> np.ndarray:
    corners = np.array([[low, low, z], [high, low, z], [high, high, z], [low, high, z]])
    return np.stack([corners[[0, 1, 2]], corners[[0, 2, 3]]])  # [2, 3, 3]


def test_open_plane_marks_exactly_one_layer_and_fills_nothing():
    result = voxelise_grid_triangles(plane(20.3))
    assert cell_set(result.coords) == cells_between((5, 5, 20), (40, 40, 20))
    assert result.filled == 0


def test_plane_on_a_cell_boundary_marks_the_layer_above_it():
    """A point exactly on a boundary belongs to the cell the floor rule gives (documented in the module)."""
    result = voxelise_grid_triangles(np.concatenate([plane(20.0), plane(10.3)]))  # layer 19 within the mesh's box
    assert cell_set(result.coords) == cells_between((5, 5, 20), (40, 40, 20)) | cells_between((5, 5, 10), (40, 40, 10))


def test_box_on_cell_boundaries_is_one_cell_thick():
    result = voxelise_mesh(*(lambda m: (m.vertices, m.faces))(box_mesh((16, 16, 16), (32, 32, 32))))
    assert cell_set(result.coords) == cells_between((16, 16, 16), (32, 32, 32))
    assert result.filled == 15 ** 3


def test_hollow_around_keeps_an_enclosing_box_hollow():
    room = box_mesh((4.5, 4.5, 4.5), (50.5, 50.5, 50.5))
    inside = np.array([[20, 20, 20], [30, 31, 32]])
    hollow = voxelise_mesh(room.vertices, room.faces, hollow_around=inside)
    assert hollow.filled == 0
    assert len(hollow.coords) == hollow.surface
    assert not cell_set(inside) & cell_set(hollow.coords)
    outside = voxelise_mesh(room.vertices, room.faces, hollow_around=np.array([[60, 60, 60], [1, 2, 3]]))
    assert outside.filled == 45 ** 3
    filled = voxelise_mesh(room.vertices, room.faces)
    assert filled.filled == 45 ** 3 and cell_set(inside) <= cell_set(filled.coords)


def test_hollow_around_only_spares_the_region_that_holds_it():
    first, second = box_mesh((4.5, 4.5, 4.5), (20.5, 20.5, 20.5)), box_mesh((30.5, 30.5, 30.5), (50.5, 50.5, 50.5))
    both = trimesh.util.concatenate([first, second])
    result = voxelise_mesh(both.vertices, both.faces, hollow_around=np.array([[10, 10, 10]]))
    assert result.filled == 19 ** 3  # the second box only
    assert (10, 10, 10) not in cell_set(result.coords) and (40, 40, 40) in cell_set(result.coords)


def test_box_half_outside_the_volume_is_clipped_to_it():
    box = box_mesh((40.5, 10.5, 10.5), (80.5, 20.5, 20.5))
    result = voxelise_mesh(box.vertices, box.faces)
    assert result.clipped
    assert result.coords.min() >= 0 and result.coords.max() < GRID
    expected = cells_between((40, 10, 10), (63, 20, 20))  # the surface and interior, cut at x = 63
    assert cell_set(result.coords) == expected
    assert result.surface + result.filled == len(expected)
    inside = voxelise_mesh(*(lambda m: (m.vertices, m.faces))(box_mesh((40.5, 10.5, 10.5), (60.5, 20.5, 20.5))))
    assert not inside.clipped


@pytest.mark.parametrize("offset", [70.0, 200.0])  # beyond the volume but within reach; beyond reach
def test_mesh_wholly_outside_the_volume_gives_no_cells(offset):
    box = box_mesh((offset, 10.5, 10.5), (offset + 10.5, 20.5, 20.5))
    result = voxelise_mesh(box.vertices, box.faces)
    assert result.clipped and len(result.coords) == 0 and result.surface == result.filled == 0


def test_mesh_beyond_reach_is_dropped_but_its_part_inside_is_kept():
    box = box_mesh((10.5, 10.5, 10.5), (300.5, 20.5, 20.5))  # x reaches past (1.5 + 0.5) * 64 = 128
    result = voxelise_mesh(box.vertices, box.faces)
    assert result.clipped
    walls = {c for c in cells_between((10, 10, 10), (63, 20, 20)) if c[0] == 10 or {c[1], c[2]} & {10, 20}}
    assert cell_set(result.coords) == walls  # its far end is beyond reach, so the box is open: nothing filled


def test_tiny_triangle_marks_its_one_cell():
    triangle = np.array([[[20.2, 30.3, 40.4], [20.3, 30.35, 40.45], [20.25, 30.45, 40.41]]])
    assert cell_set(voxelise_grid_triangles(triangle).coords) == {(20, 30, 40)}


def test_long_thin_diagonal_sliver_marks_every_cell_it_crosses():
    sliver = np.array([[5.13, 7.27, 9.41], [25.71, 21.33, 19.93], [25.74, 21.31, 19.96]])
    result = cell_set(voxelise_grid_triangles(sliver[None]).coords)
    assert sampled_cells(sliver, 1500) <= result
    assert result == reference_cells(sliver)


def test_random_triangles_match_the_reference_overlap_test():
    rng = np.random.default_rng(7)
    for size in (0.3, 2.0, 5.0):
        triangles = rng.uniform(20, 40, size=(6, 1, 3)) + rng.normal(scale=size, size=(6, 3, 3))
        for triangle in triangles:
            result = cell_set(voxelise_grid_triangles(triangle[None]).coords)
            assert result == reference_cells(triangle)
            assert sampled_cells(triangle, 120) <= result


def test_degenerate_triangles_mark_the_cells_their_segment_or_point_touches():
    segment = np.array([[10.3, 11.6, 12.2], [18.7, 14.1, 13.9], [14.5, 12.85, 13.05]])  # third point on the segment
    result = cell_set(voxelise_grid_triangles(segment[None]).coords)
    t = np.linspace(0, 1, 20001)[:, None]
    assert result == cell_set(np.floor(segment[0] + t * (segment[1] - segment[0])).astype(int))
    point = np.array([[[33.3, 22.2, 11.1]] * 3])
    assert cell_set(voxelise_grid_triangles(point).coords) == {(33, 22, 11)}


def test_many_triangles_in_chunks_give_the_same_cells_as_one_at_a_time(monkeypatch):
    from iscene_server.geometry import mesh_voxels

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.2)
    whole = voxelise_mesh(sphere.vertices, sphere.faces)
    monkeypatch.setattr(mesh_voxels, "MAX_PAIRS", 7)
    chunked = voxelise_mesh(sphere.vertices, sphere.faces)
    assert np.array_equal(whole.coords, chunked.coords) and whole.filled == chunked.filled > 0


def test_check_is_called_and_stops_the_work():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.2)
    calls = []
    voxelise_mesh(sphere.vertices, sphere.faces, check=lambda: calls.append(1))
    assert calls

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    with pytest.raises(Stop):
        voxelise_mesh(sphere.vertices, sphere.faces, check=stop)


def test_empty_and_invalid_meshes():
    empty = voxelise_mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    assert len(empty.coords) == 0 and not empty.clipped
    with pytest.raises(ValueError, match="face indices"):
        voxelise_mesh(np.zeros((3, 3)), np.array([[0, 1, 3]]))
    with pytest.raises(ValueError, match="finite"):
        voxelise_mesh(np.array([[0, 0, 0], [np.nan, 0, 0], [0, 1, 0]]) * 0.1, np.array([[0, 1, 2]]))
