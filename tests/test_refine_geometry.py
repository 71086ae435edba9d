"""Refine geometry: moving stage-1 occupancy by edit matrices, and the instance rasteriser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iscene_server.engine.camera import Camera
from iscene_server.geometry.affine import transform_mesh
from iscene_server.geometry.raster.triangles import RenderMesh, render_instances
from iscene_server.geometry.voxels import GRID, occupancy_grid, transform_voxels, union, voxel_centres


# --- helpers ----------------------------------------------------------------------------------------------------
def translation(offset) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = offset
    return m


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def box_cells(lo, hi) -> np.ndarray:
    axes = [np.arange(a, b) for a, b in zip(lo, hi, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int16)


def as_set(coords: np.ndarray) -> set[tuple[int, int, int]]:
    return set(map(tuple, np.asarray(coords).tolist()))


def exterior_reaches(occupied_coords: np.ndarray, target: tuple[int, int, int]) -> bool:
    """Whether empty space 6-connected to the grid corner reaches ``target`` (i.e. the shell leaks)."""
    occupied = np.zeros((GRID,) * 3, dtype=bool)
    occupied[tuple(np.asarray(occupied_coords, dtype=np.int64).T)] = True
    free = np.pad(~occupied, 1, constant_values=False)
    reached = np.zeros_like(free)
    reached[1, 1, 1] = True
    while True:
        grown = reached.copy()
        for axis in range(3):
            grown[1:-1, 1:-1, 1:-1] |= np.roll(reached, 1, axis)[1:-1, 1:-1, 1:-1]
            grown[1:-1, 1:-1, 1:-1] |= np.roll(reached, -1, axis)[1:-1, 1:-1, 1:-1]
        grown &= free
        if (grown == reached).all():
            return bool(reached[tuple(np.add(target, 1))])
        reached = grown


def top_camera(size=(100, 100), scale=40.0, principal=(50.0, 50.0)) -> Camera:
    """Orthographic camera above the scene looking down -z: u = s x + cx, v = -s y + cy, depth = 2 - z."""
    return Camera("orthographic", np.diag([1.0, -1.0, -1.0]), [0.0, 0.0, 2.0], scale, principal, size)


def oblique_camera(size=(160, 120), focal=190.0, principal=(81.3, 58.7)) -> Camera:
    """Perspective camera at a generic position looking at the origin."""
    position = np.array([1.3, -2.1, 1.1])
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])
    return Camera("perspective", rot, -rot @ position, focal, principal, size)


def cube_mesh(lo=-0.5, hi=0.5, label=1, color=(0.5, 0.5, 0.5)) -> RenderMesh:
    corners = np.array([[x, y, z] for x in (lo, hi) for y in (lo, hi) for z in (lo, hi)], dtype=np.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = np.array([tri for a, b, c, d in quads for tri in ((a, b, c), (a, c, d))])
    return RenderMesh(corners, faces, np.tile(color, (8, 1)), label)


def quad_mesh(corners, label: int, color=(1.0, 1.0, 1.0)) -> RenderMesh:
    return RenderMesh(np.asarray(corners, dtype=np.float64), np.array([[0, 1, 2], [0, 2, 3]]),
                      np.tile(color, (4, 1)), label)


def pixel_centres(width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs + 0.5, ys + 0.5], axis=-1).reshape(-1, 2)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise (in y-down pixel coordinates: clockwise on screen) hull by the monotone chain."""
    pts = sorted(map(tuple, points))

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and np.cross(np.subtract(out[-1], out[-2]), np.subtract(p, out[-2])) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return np.array(half(pts) + half(pts[::-1]))


def inside_convex(points: np.ndarray, hull: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strictly-inside mask and smallest distance to an edge of a convex polygon, for ``[N, 2]`` points."""
    a, b = hull, np.roll(hull, -1, axis=0)
    edge = b - a
    rel = points[:, None, :] - a[None]
    cross = edge[None, :, 0] * rel[..., 1] - edge[None, :, 1] * rel[..., 0]
    dist = np.abs(cross) / np.linalg.norm(edge, axis=1)[None]
    return (cross > 0).all(axis=1), dist.min(axis=1)


# --- voxels -----------------------------------------------------------------------------------------------------
@pytest.fixture
def blob() -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.unique(rng.integers(8, 56, size=(600, 3)), axis=0).astype(np.int16)


def test_identity_returns_coords_unchanged(blob):
    result = transform_voxels(blob, np.eye(4) + 1e-9)
    assert result.identity and result.dropped == 0.0
    assert result.coords.dtype == np.int16 and np.array_equal(result.coords, blob)


def test_whole_cell_translation_is_exact(blob):
    result = transform_voxels(blob, translation(np.array([3, -2, 5]) / GRID))
    assert not result.identity and result.dropped == 0.0
    assert np.array_equal(result.coords, np.unique(blob + np.array([3, -2, 5], dtype=np.int16), axis=0))


def test_translation_partly_outside_drops_cells_and_reports_it():
    box = box_cells((50, 10, 10), (60, 20, 20))  # x 50..59
    result = transform_voxels(box, translation([8 / GRID, 0, 0]))  # -> x 58..67, 64..67 fall off
    assert as_set(result.coords) == as_set(box_cells((58, 10, 10), (64, 20, 20)))
    assert result.dropped == pytest.approx(0.4)
    gone = transform_voxels(box, translation([0.5, 0, 0]))
    assert len(gone.coords) == 0 and gone.dropped == 1.0


def test_quarter_turns_about_the_grid_centre_are_permutations(blob):
    i, j, k = blob.astype(np.int64).T
    expected = {
        ("z", 90): np.stack([63 - j, i, k], axis=1),
        ("x", -90): np.stack([i, k, 63 - j], axis=1),
        ("y", 180): np.stack([63 - i, j, 63 - k], axis=1),
    }
    for (axis, degrees), coords in expected.items():
        result = transform_voxels(blob, rotation(axis, degrees))
        assert len(result.coords) == len(blob) and result.dropped == 0.0
        assert as_set(result.coords) == as_set(coords)


def test_rotating_a_solid_box_keeps_volume_and_leaves_no_holes():
    box = box_cells((20, 24, 26), (44, 40, 38))
    matrix = rotation("z", 30) @ rotation("x", 20)
    result = transform_voxels(box, matrix)
    assert abs(len(result.coords) / len(box) - 1.0) < 0.10
    # every cell whose centre maps back at least one cell inside the source box must be occupied
    everything = box_cells((0, 0, 0), (GRID, GRID, GRID))
    back = (voxel_centres(everything) @ np.linalg.inv(matrix)[:3, :3].T + 0.5) * GRID
    deep = ((back > np.array([21, 25, 27])) & (back < np.array([43, 39, 37]))).all(axis=1)
    assert as_set(everything[deep]) <= as_set(result.coords)
    # and nothing lands further than one cell outside it
    near = ((back > np.array([19, 23, 25])) & (back < np.array([45, 41, 39]))).all(axis=1)
    assert as_set(result.coords) <= as_set(everything[near])


def test_rotated_surface_shell_stays_closed():
    """Stage-1 occupancy is a surface shell (cells the surface passes through); rotation must not open it."""
    everything = box_cells((0, 0, 0), (GRID, GRID, GRID))
    distance = np.linalg.norm(everything + 0.5 - 32.0, axis=1)
    shell = everything[np.abs(distance - 18.0) < 0.87]
    assert not exterior_reaches(shell, (32, 32, 32))
    result = transform_voxels(shell, rotation("z", 30) @ rotation("y", 20))
    assert not exterior_reaches(result.coords, (32, 32, 32))


def test_uniform_scale_multiplies_volume():
    box = box_cells((29, 29, 29), (35, 35, 35))
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    result = transform_voxels(box, scale)
    assert len(result.coords) == 8 * len(box)
    assert as_set(result.coords) == as_set(box_cells((26, 26, 26), (38, 38, 38)))
    rotated = transform_voxels(box, rotation("z", 25) @ scale)
    assert abs(len(rotated.coords) / (8 * len(box)) - 1.0) < 0.15


@pytest.mark.parametrize("matrix, message", [
    (np.eye(3), "4x4"),
    (np.full((4, 4), np.nan), "NaN"),
    (np.vstack([np.eye(4)[:3], [0.1, 0, 0, 1]]), "last row"),
    (np.diag([1.0, 0.0, 1.0, 1.0]), "scale"),
    (np.diag([1e4, 1.0, 1.0, 1.0]), "scale"),
])
def test_invalid_matrices_are_rejected(blob, matrix, message):
    with pytest.raises(ValueError, match=message):
        transform_voxels(blob, matrix)


def test_out_of_grid_coords_are_rejected():
    with pytest.raises(ValueError, match="coords"):
        transform_voxels(np.array([[0, 0, 64]]), translation([0.1, 0, 0]))


def test_occupancy_grid_and_union():
    a, b = np.array([[0, 1, 2], [3, 4, 5]]), np.array([[3, 4, 5], [63, 0, 0]])
    grid = occupancy_grid(a)
    assert grid.shape == (1, GRID, GRID, GRID) and grid.dtype == np.float32
    assert grid.sum() == 2 and grid[0, 0, 1, 2] == 1 and grid[0, 3, 4, 5] == 1
    merged = union([a, b])
    assert merged.dtype == np.int16 and merged.tolist() == [[0, 1, 2], [3, 4, 5], [63, 0, 0]]
    assert union([]).shape == (0, 3)


def test_voxel_centres_are_the_cell_centres_of_s():
    half = 0.5 / GRID
    coords = np.array([[0, 0, 0], [GRID - 1, GRID - 1, GRID - 1], [GRID // 2, 0, 10]])
    expected = [[-0.5 + half] * 3, [0.5 - half] * 3, [half, -0.5 + half, -0.5 + 10 / GRID + half]]
    np.testing.assert_allclose(voxel_centres(coords), expected, atol=1e-12)
    on_tensor = voxel_centres(torch.from_numpy(coords).float())  # the decoders' coordinates are tensors
    np.testing.assert_allclose(on_tensor.numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(voxel_centres(np.array([[1, 2, 3]]), grid=4), [[-0.125, 0.125, 0.375]])


# --- raster -----------------------------------------------------------------------------------------------------
def test_orthographic_cube_covers_the_expected_square():
    rendering = render_instances([cube_mesh(label=7, color=(0.2, 0.4, 0.6))], top_camera())
    assert rendering.rgb.shape == (100, 100, 3) and rendering.ids.dtype == np.uint32
    expected = np.zeros((100, 100), dtype=np.uint32)
    expected[30:70, 30:70] = 7  # u, v in [30, 70]: pixel centres 30.5 .. 69.5
    assert np.array_equal(rendering.ids, expected)
    assert np.allclose(rendering.depth[30:70, 30:70], 1.5) and np.isinf(rendering.depth[expected == 0]).all()
    assert (rendering.rgb[30:70, 30:70] == [51, 102, 153]).all() and (rendering.rgb[expected == 0] == 0).all()


def test_any_camera_with_the_projecting_interface_renders_the_same():
    """geometry/ knows cameras only by ``image_size``, ``perspective`` and ``project``: a plain pinhole written
    here renders exactly what the engine's Camera does."""
    camera = oblique_camera()

    class Pinhole:
        image_size, perspective = camera.image_size, True

        def project(self, points):
            c = np.asarray(points, dtype=np.float64) @ camera.rotation.T + camera.translation
            return c[:, :2] / c[:, 2:] * camera.focal + np.array(camera.principal), c[:, 2]

    meshes = [cube_mesh(-0.3, 0.2, label=3, color=(0.9, 0.1, 0.4))]
    ours, theirs = render_instances(meshes, camera), render_instances(meshes, Pinhole())
    assert (ours.ids == 3).sum() > 500
    for field in ("rgb", "ids", "depth"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))


def test_orthographic_cube_matches_analytic_square_off_grid():
    camera = top_camera(principal=(50.3, 49.8), scale=37.7)
    rendering = render_instances([cube_mesh(label=2)], camera)
    centres = pixel_centres(100, 100)
    lo, hi = camera.project(np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5]]))[0]
    expected = ((centres > lo) & (centres < hi)).all(axis=1).reshape(100, 100)
    assert np.array_equal(rendering.ids == 2, expected)


def test_perspective_silhouette_matches_projected_corners():
    camera = oblique_camera()
    cube = cube_mesh(-0.3, 0.25, label=3)
    rendering = render_instances([cube], camera)
    hull = convex_hull(camera.project(cube.vertices)[0])
    inside, distance = inside_convex(pixel_centres(160, 120), hull)
    decided = distance > 1e-6
    assert inside.sum() > 1000
    assert np.array_equal((rendering.ids.reshape(-1) == 3)[decided], inside[decided])


@pytest.mark.parametrize("jitter, principal", [(0.3, 60.0), (0.0, 60.5)])
def test_shared_edges_leave_no_cracks(jitter, principal):
    """A finely triangulated square (random winding) covers exactly the pixel centres inside it.

    Jittered: generic shared edges; unjittered with a half-pixel offset: every edge runs through pixel centres,
    which the top-left rule must give to exactly one side.
    """
    rng = np.random.default_rng(5)
    n = 20
    u, v = np.meshgrid(np.linspace(-0.5, 0.5, n + 1), np.linspace(-0.5, 0.5, n + 1), indexing="ij")
    offsets = rng.uniform(-jitter, jitter, size=(2, n + 1, n + 1)) / n
    offsets[:, [0, -1], :] = 0.0
    offsets[:, :, [0, -1]] = 0.0
    vertices = np.stack([u + offsets[0], v + offsets[1], np.zeros_like(u)], axis=-1).reshape(-1, 3)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)]).reshape(-1, 3)
    flip = rng.random(len(faces)) < 0.5
    faces[flip] = faces[flip][:, ::-1]
    mesh = RenderMesh(vertices, faces, np.ones_like(vertices), 4)
    rendering = render_instances([mesh], top_camera(size=(120, 120), scale=100.0, principal=(principal, principal)))
    assert (rendering.ids[11:109, 11:109] == 4).all() and (rendering.ids != 0).sum() == 100 * 100


def test_nearer_object_wins_the_overlap():
    far = quad_mesh([[-0.4, -0.4, 0.0], [0.2, -0.4, 0.0], [0.2, 0.2, 0.0], [-0.4, 0.2, 0.0]], 1, (1, 0, 0))
    near = quad_mesh([[-0.2, -0.2, 0.3], [0.4, -0.2, 0.3], [0.4, 0.4, 0.3], [-0.2, 0.4, 0.3]], 2, (0, 0, 1))
    for camera in (top_camera(), oblique_camera()):
        first = render_instances([far, near], camera)
        second = render_instances([near, far], camera)
        assert np.array_equal(first.ids, second.ids) and np.array_equal(first.rgb, second.rgb)
        centre_uv = np.round(camera.project(np.array([[0.0, 0.0, 0.3]]))[0][0] - 0.5).astype(int)
        assert first.ids[centre_uv[1], centre_uv[0]] == 2
        assert {1, 2} <= set(np.unique(first.ids).tolist())
    ids = render_instances([far, near], top_camera()).ids
    assert (ids[42:58, 42:58] == 2).all()  # the overlap x, y in (-0.2, 0.2)


def test_vertex_colours_interpolate():
    vertices = np.array([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [-0.5, 0.5, 0.0]])
    mesh = RenderMesh(vertices, np.array([[0, 1, 2]]), np.eye(3), 5)
    camera = top_camera(size=(100, 100), scale=80.0)
    rendering = render_instances([mesh], camera)
    (u0, v0), (u1, v1), (u2, v2) = camera.project(vertices)[0]
    corner_pixels = [(int(u0) + 1, int(v0) - 2), (int(u1) - 4, int(v1) - 2), (int(u2) + 1, int(v2) + 2)]
    for channel, (x, y) in enumerate(corner_pixels):
        assert rendering.ids[y, x] == 5
        assert rendering.rgb[y, x, channel] > 220 and np.delete(rendering.rgb[y, x], channel).max() < 35
    centroid = np.round(camera.project(vertices.mean(0, keepdims=True))[0][0] - 0.5).astype(int)
    assert np.abs(rendering.rgb[centroid[1], centroid[0]].astype(int) - 85).max() <= 6


def test_perspective_colours_are_perspective_correct():
    vertices = np.array([[-0.5, -0.4, -0.3], [0.5, -0.2, 0.1], [0.0, 0.5, 0.4]])
    mesh = RenderMesh(vertices, np.array([[0, 1, 2]]), np.eye(3), 1)
    camera = oblique_camera()
    rendering = render_instances([mesh], camera)
    ys, xs = np.nonzero(rendering.ids)
    rays = (np.stack([xs + 0.5, ys + 0.5], 1) - np.array(camera.principal)) / camera.focal
    directions = np.concatenate([rays, np.ones((len(rays), 1))], 1) @ camera.rotation  # in S
    normal = np.cross(vertices[1] - vertices[0], vertices[2] - vertices[0])
    origin = camera.position
    hits = origin + directions * ((vertices[0] - origin) @ normal / (directions @ normal))[:, None]
    corner = vertices[None] - hits[:, None]
    bary = np.cross(np.roll(corner, -1, axis=1), np.roll(corner, -2, axis=1)) @ normal / (normal @ normal)
    assert np.abs(rendering.rgb[ys, xs].astype(float) - bary * 255).max() <= 1.0
    depth = (hits @ camera.rotation.T + camera.translation)[:, 2]
    assert np.allclose(rendering.depth[ys, xs], depth, rtol=1e-4)


def test_nothing_behind_the_camera_is_drawn():
    assert not render_instances([cube_mesh(2.2, 2.6)], top_camera()).ids.any()  # depth = 2 - z < 0
    perspective = Camera("perspective", np.eye(3), [0.0, 0.0, 0.0], 50.0, (50.0, 50.0), (100, 100))
    mirrored = quad_mesh([[-1, -1, -2], [1, -1, -2], [1, 1, -2], [-1, 1, -2]], 3)
    assert not render_instances([mirrored], perspective).ids.any()
    ahead = quad_mesh([[-1, -1, 2], [1, -1, 2], [1, 1, 2], [-1, 1, 2]], 4)
    ids = render_instances([mirrored, ahead], perspective).ids
    assert (ids[25:75, 25:75] == 4).all() and set(np.unique(ids).tolist()) == {0, 4}


def test_empty_scene_renders_background():
    rendering = render_instances([], top_camera(size=(64, 48)))
    assert rendering.rgb.shape == (48, 64, 3) and not rendering.rgb.any()
    assert rendering.ids.shape == (48, 64) and not rendering.ids.any()
    assert rendering.depth.dtype == np.float32 and np.isinf(rendering.depth).all()
    empty = RenderMesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3)), 1)
    assert not render_instances([empty], top_camera()).ids.any()


def test_region_and_size_select_part_of_the_image():
    camera = oblique_camera()
    meshes = [cube_mesh(-0.3, 0.25, label=3), cube_mesh(0.1, 0.45, label=4, color=(0.2, 0.9, 0.4))]
    full = render_instances(meshes, camera)
    crop = render_instances(meshes, camera, region=(40, 20, 120, 100))
    assert np.array_equal(crop.ids, full.ids[20:100, 40:120]) and np.array_equal(crop.rgb, full.rgb[20:100, 40:120])
    half = render_instances(meshes, camera, size=(80, 60))
    assert half.ids.shape == (60, 80)
    assert abs((half.ids != 0).sum() * 4 / (full.ids != 0).sum() - 1.0) < 0.05


def test_large_triangles_and_small_budgets_agree():
    camera = oblique_camera()
    cube = cube_mesh(-0.3, 0.25, label=2)
    in_camera = np.array([[-6.0, -5.0, 3.5], [6.0, -5.0, 3.5], [0.0, 7.0, 4.5]])  # behind the cube, over the image
    backdrop = RenderMesh((in_camera - camera.translation) @ camera.rotation, np.array([[0, 1, 2]]), np.eye(3), 3)
    reference = render_instances([cube, backdrop], camera)
    assert set(np.unique(reference.ids).tolist()) == {2, 3}
    chunked = render_instances([cube, backdrop], camera, budget=500)  # many chunks, rows split
    for name in ("ids", "rgb", "depth"):
        assert np.array_equal(getattr(reference, name), getattr(chunked, name))


def test_bad_meshes_are_rejected():
    cube = cube_mesh()
    with pytest.raises(ValueError, match="label"):
        render_instances([RenderMesh(cube.vertices, cube.faces, cube.colors, 0)], top_camera())
    with pytest.raises(ValueError, match="out of range"):
        render_instances([RenderMesh(cube.vertices, cube.faces + 1, cube.colors, 1)], top_camera())
    with pytest.raises(ValueError, match="colors"):
        render_instances([RenderMesh(cube.vertices, cube.faces, cube.colors[:3], 1)], top_camera())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    camera = oblique_camera()
    meshes = [cube_mesh(-0.3, 0.25, label=3), cube_mesh(0.1, 0.45, label=4, color=(0.2, 0.9, 0.4))]
    cpu, cuda = render_instances(meshes, camera), render_instances(meshes, camera, device="cuda")
    assert np.array_equal(cpu.ids, cuda.ids) and np.abs(cpu.rgb.astype(int) - cuda.rgb).max() <= 1
    assert np.allclose(cpu.depth, cuda.depth, rtol=1e-6)


def test_transform_mesh_applies_the_matrix():
    vertices = np.array([[0.1, 0.2, 0.3], [-0.2, 0.0, 0.1]], dtype=np.float32)
    matrix = translation([0.1, -0.1, 0.0]) @ rotation("z", 90)
    moved = transform_mesh(vertices, matrix)
    assert moved.dtype == np.float32
    assert np.allclose(moved, [[-0.1, 0.0, 0.3], [0.1, -0.3, 0.1]], atol=1e-6)
    with pytest.raises(ValueError):
        transform_mesh(vertices, np.zeros((4, 4)))


def test_random_triangles_match_a_brute_force_reference():
    """Overlapping, interpenetrating triangles: ids and depth agree with a per-pixel float64 reference wherever the
    reference is unambiguous (pixel centres not within snapping distance of an edge)."""
    rng = np.random.default_rng(11)
    camera = oblique_camera(size=(64, 48), focal=110.0, principal=(31.7, 24.2))
    meshes = [RenderMesh(rng.uniform(-0.5, 0.5, (3, 3)), np.array([[0, 1, 2]]), rng.random((3, 3)), label)
              for label in range(1, 41)]
    rendering = render_instances(meshes, camera)
    centres = pixel_centres(64, 48)
    best_depth = np.full(len(centres), np.inf)
    best_label = np.zeros(len(centres), dtype=np.int64)
    ambiguous = np.zeros(len(centres), dtype=bool)
    for mesh in meshes:
        (a, b, c), depth = camera.project(mesh.vertices)
        area = np.cross(b - a, c - a)
        w = np.stack([np.cross(c - b, centres - b), np.cross(a - c, centres - c), np.cross(b - a, centres - a)], 1)
        edge_lengths = np.linalg.norm([c - b, a - c, b - a], axis=1)
        distance = (w * np.sign(area) / edge_lengths).min(axis=1)  # > 0 inside, in pixels
        ambiguous |= np.abs(distance) < 0.01
        z = 1.0 / ((w / area) / depth).sum(axis=1)
        nearer = (distance > 0) & (z < best_depth)
        ambiguous |= (distance > 0) & (np.abs(z - best_depth) < 1e-4)
        best_depth[nearer], best_label[nearer] = z[nearer], mesh.label
    assert (~ambiguous).mean() > 0.9 and (best_label > 0).mean() > 0.3
    assert np.array_equal(rendering.ids.reshape(-1)[~ambiguous], best_label[~ambiguous])
    clear = ~ambiguous & (best_label > 0)
    assert np.allclose(rendering.depth.reshape(-1)[clear], best_depth[clear], rtol=1e-4)
