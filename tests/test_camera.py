"""Tests of engine.camera: the camera model, its Blender settings (checked in real Blender) and the solver.

The solver is checked on synthetic scenes: voxelised boxes and spheres in S, seen by known cameras, their label
maps rendered here by exact ray casting through the voxel grid (not by splatting, as the solver renders), then
solved back.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from iscene_server.engine.camera import (
    ORTHOGRAPHIC,
    PERSPECTIVE,
    Camera,
    CameraFit,
    axis_aligned_rotations,
    default_camera,
    solve_camera,
)
from iscene_server.engine.preprocess import crop_bbox
from iscene_server.geometry.voxels import GRID

ROTATIONS = axis_aligned_rotations()
FRONT, BACK, SIDE, BELOW, SIDE_LYING = 5, 7, 13, 0, 20  # indices into ROTATIONS (see test_orientations)


# ---- synthetic scenes -----------------------------------------------------------------------------------

def box(low, high) -> np.ndarray:
    axes = [np.arange(a, b) for a, b in zip(low, high, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def ball(centre, radius) -> np.ndarray:
    coords = box((0, 0, 0), (GRID,) * 3)
    return coords[((coords + 0.5 - np.asarray(centre)) ** 2).sum(axis=1) <= radius ** 2]


def scene() -> dict[int, np.ndarray]:
    """Two boxes and two balls; from most axis views one of them partly hides another."""
    return {3: box((6, 6, 4), (30, 30, 20)), 7: ball((40, 22, 34), 9.5), 12: box((44, 40, 4), (56, 54, 36)),
            20: ball((20, 46, 44), 7.5)}


def centres(voxels: dict[int, np.ndarray]) -> np.ndarray:
    return np.concatenate([(coords + 0.5) / GRID - 0.5 for coords in voxels.values()])


def ray_cast(voxels: dict[int, np.ndarray], camera: Camera) -> np.ndarray:
    """The exact label map: the ray through each pixel centre marched voxel by voxel (Amanatides-Woo)."""
    grid = np.zeros((GRID,) * 3, np.int64)
    for label, coords in voxels.items():
        grid[tuple(coords.T)] = label
    occupied = np.argwhere(grid > 0)
    low, high = occupied.min(axis=0), occupied.max(axis=0) + 1
    width, height = camera.image_size
    corners = np.array(np.meshgrid(*zip(low, high, strict=True))).reshape(3, -1).T / GRID - 0.5
    uv, _ = camera.project(corners)
    x0, y0 = np.clip(np.floor(uv.min(axis=0)).astype(int), 0, None)
    x1, y1 = np.minimum(np.ceil(uv.max(axis=0)).astype(int) + 1, [width, height])
    ys, xs = np.mgrid[y0:y1, x0:x1]
    image_plane = (np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1) - camera.principal) / camera.focal
    if camera.kind == PERSPECTIVE:
        direction = np.concatenate([image_plane, np.ones((len(image_plane), 1))], axis=1) @ camera.rotation
        origin = np.broadcast_to(camera.position, direction.shape)
    else:
        direction = np.broadcast_to(camera.rotation[2], (len(image_plane), 3))
        origin = (np.concatenate([image_plane, np.zeros((len(image_plane), 1))], axis=1)
                  - camera.translation) @ camera.rotation
    start, velocity = (origin + 0.5) * GRID, direction * GRID  # in voxel units
    with np.errstate(divide="ignore", invalid="ignore"):
        t_low, t_high = (low - start) / velocity, (high - start) / velocity
        t_in = np.nanmax(np.minimum(t_low, t_high), axis=1)
        t_out = np.nanmin(np.maximum(t_low, t_high), axis=1)
    ray = np.flatnonzero(t_out > np.maximum(t_in, 0))
    t0 = np.maximum(t_in[ray], 0) + 1e-9
    voxel = np.clip(np.floor(start[ray] + t0[:, None] * velocity[ray]).astype(np.int64), low, high - 1)
    speed = velocity[ray]
    sign = np.sign(speed).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_next = np.where(sign != 0, (voxel + (sign > 0) - start[ray]) / speed, np.inf)
        t_step = np.where(sign != 0, np.abs(1 / speed), np.inf)
    labels = np.zeros(len(image_plane), np.int64)
    flat, strides = grid.ravel(), np.array([GRID * GRID, GRID, 1])
    while ray.size:
        inside = np.all((voxel >= low) & (voxel < high), axis=1)
        value = np.where(inside, flat[np.clip(voxel, 0, GRID - 1) @ strides], 0)
        labels[ray] = value
        axis = np.argmin(t_next, axis=1)
        rows = np.arange(ray.size)
        voxel[rows, axis] += sign[rows, axis]
        t_next[rows, axis] += t_step[rows, axis]
        alive = (value == 0) & inside
        ray, voxel, t_next, t_step, sign = ray[alive], voxel[alive], t_next[alive], t_step[alive], sign[alive]
    ids = np.zeros((height, width), np.uint32)
    ids[ys.ravel(), xs.ravel()] = labels
    return ids


def make_camera(kind: str, orientation: int, size: tuple[int, int], fov_degrees: float = 45.0,
                offset=(0.12, -0.08), principal_offset=(6.0, -4.0), fill: float = 0.5) -> Camera:
    """A camera whose view of S fills about ``fill`` of the image, off centre; a real lens for perspective
    (``fov_degrees`` across the image width), the principal point near the image centre."""
    width, height = size
    principal = (width / 2 + principal_offset[0], height / 2 + principal_offset[1])
    rotation = ROTATIONS[orientation]
    if kind == PERSPECTIVE:
        focal = (width / 2) / np.tan(np.radians(fov_degrees) / 2)
        distance = focal * 0.9 / (fill * max(size))
        return Camera(PERSPECTIVE, rotation, (*offset, distance), focal, principal, size)
    return Camera(ORTHOGRAPHIC, rotation, (*offset, 2.0), fill * max(size) / 0.9, principal, size)


@functools.cache
def render_case(kind: str, orientation: int, size: tuple[int, int], fov_degrees: float = 45.0):
    """The true camera, the scene's voxels and its label map (cached: the arrays must not be modified)."""
    camera = make_camera(kind, orientation, size, fov_degrees)
    voxels = scene()
    ids = ray_cast(voxels, camera)
    visible = {label: int((ids == label).sum()) for label in voxels}
    assert min(visible.values()) > 200, f"every instance must show in the test image: {visible}"
    return camera, voxels, ids


# ---- the solver -----------------------------------------------------------------------------------------

CASES = [
    (PERSPECTIVE, FRONT, (640, 480), 50.0),
    (PERSPECTIVE, BACK, (480, 640), 40.0),
    (PERSPECTIVE, BELOW, (800, 600), 35.0),
    (ORTHOGRAPHIC, SIDE, (640, 480), None),
    (ORTHOGRAPHIC, SIDE_LYING, (480, 640), None),
]


@pytest.mark.parametrize("kind, orientation, size, fov", CASES)
def test_solve_recovers_known_camera(kind, orientation, size, fov):
    truth, voxels, ids = render_case(kind, orientation, size, fov or 45.0)
    crop = crop_bbox(ids > 0)
    assert crop[2] - crop[0] < 0.8 * size[0]  # the image is larger than the model's crop

    fit = solve_camera(voxels, ids, crop)

    assert fit.orientation == orientation
    assert fit.camera.kind == kind
    assert fit.camera.image_size == size
    assert fit.mean_iou > 0.97 and min(fit.per_instance_iou.values()) > 0.95
    points = centres(voxels)
    error = np.linalg.norm(fit.camera.project(points)[0] - truth.project(points)[0], axis=1)
    assert error.mean() < 0.75 and error.max() < 1.5, (error.mean(), error.max())
    if kind == PERSPECTIVE:
        assert fit.camera.focal == pytest.approx(truth.focal, rel=0.03)
        assert np.linalg.norm(fit.camera.position - truth.position) < 0.03 * np.linalg.norm(truth.position)
        assert (fit.camera.to_camera(points)[:, 2] > 0).all()


def perturbed(voxels: dict[int, np.ndarray], rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Generator-like errors: each instance shifted by up to a voxel, grown or shrunk by one, 5 % of it lost."""
    out = {}
    for label, coords in voxels.items():
        grid = np.zeros((GRID + 2,) * 3, bool)
        grid[tuple((coords + 1).T)] = True
        neighbours = [np.roll(grid, shift, axis) for axis in range(3) for shift in (-1, 1)]
        grid = np.logical_or.reduce([grid, *neighbours]) if rng.random() < 0.5 else np.logical_and.reduce(
            [grid, *neighbours])
        moved = np.argwhere(grid[1:-1, 1:-1, 1:-1]) + rng.integers(-1, 2, 3)
        moved = moved[np.all((moved >= 0) & (moved < GRID), axis=1)]
        out[label] = moved[rng.random(len(moved)) > 0.05]
    return out


@pytest.mark.parametrize("kind, orientation, size, fov", [CASES[0], CASES[3]])
def test_solve_tolerates_imperfect_voxels(kind, orientation, size, fov):
    truth, voxels, ids = render_case(kind, orientation, size, fov or 45.0)
    fit = solve_camera(perturbed(voxels, np.random.default_rng(7)), ids, crop_bbox(ids > 0))
    assert fit.orientation == orientation  # the kind may flip: perspective can absorb some of the errors
    assert fit.mean_iou > 0.75
    points = centres(voxels)
    uv, depth = truth.project(points)
    voxel_px = truth.focal / GRID / (depth.mean() if kind == PERSPECTIVE else 1.0)
    error = np.linalg.norm(fit.camera.project(points)[0] - uv, axis=1)
    assert error.mean() < 2 * voxel_px, (error.mean(), voxel_px)


def test_solve_with_a_single_kind():
    _truth, voxels, ids = render_case(PERSPECTIVE, SIDE, (640, 480), 45.0)
    crop = crop_bbox(ids > 0)
    orthographic = solve_camera(voxels, ids, crop, kinds=(ORTHOGRAPHIC,))
    perspective = solve_camera(voxels, ids, crop, kinds=(PERSPECTIVE,))
    assert orthographic.camera.kind == ORTHOGRAPHIC and perspective.camera.kind == PERSPECTIVE
    assert orthographic.orientation == perspective.orientation == SIDE
    assert perspective.mean_iou > 0.97 > orthographic.mean_iou > 0.5
    with pytest.raises(ValueError, match="kinds"):
        solve_camera(voxels, ids, crop, kinds=("fisheye",))


def test_degenerate_instances_are_skipped():
    _truth, voxels, ids = render_case(PERSPECTIVE, FRONT, (640, 480), 50.0)
    crop = crop_bbox(ids > 0)
    voxels = dict(voxels)
    voxels[40] = np.zeros((0, 3), np.int64)  # generated nothing
    voxels[41] = voxels[7][:50]  # no mask in the label map
    fit = solve_camera(voxels, ids, crop)
    assert fit.orientation == FRONT
    assert fit.per_instance_iou[40] == 0.0 and fit.per_instance_iou[41] == 0.0
    assert all(fit.per_instance_iou[label] > 0.95 for label in (3, 7, 12, 20))
    assert fit.mean_iou == pytest.approx(np.mean(list(fit.per_instance_iou.values())))
    assert fit.to_dict()["fit"]["fitted_labels"] == [3, 7, 12, 20]


def test_no_instance_to_fit():
    ids = np.zeros((60, 80), np.uint32)
    with pytest.raises(ValueError, match="at least one instance"):
        solve_camera({}, ids, (10, 10, 50, 50))
    fit = solve_camera({5: np.zeros((0, 3), int), 6: box((0, 0, 0), (2, 2, 2))}, ids, (10, 10, 50, 50))
    assert fit.mean_iou == 0.0 and fit.per_instance_iou == {5: 0.0, 6: 0.0}
    assert fit.to_dict()["fit"]["method"] == "default"
    reference = default_camera((10, 10, 50, 50), (80, 60))
    assert fit.camera.to_dict() == reference.to_dict()


def test_solve_is_fast_on_large_inputs():
    """Four instances of ~20k voxels each and a 1.6 MP label map (rendered at a third of the size, upscaled)."""
    voxels = {1: box((4, 4, 2), (30, 30, 30)), 2: ball((44, 18, 20), 16.5), 3: box((36, 38, 2), (60, 60, 42)),
              4: ball((16, 46, 44), 16.5)}
    assert all(15_000 < len(coords) < 25_000 for coords in voxels.values())
    small = make_camera(PERSPECTIVE, FRONT, (488, 366), 45.0, fill=0.6)
    ids = np.repeat(np.repeat(ray_cast(voxels, small), 3, axis=0), 3, axis=1)
    truth = Camera(PERSPECTIVE, small.rotation, small.translation, 3 * small.focal,
                   (3 * small.principal[0], 3 * small.principal[1]), (ids.shape[1], ids.shape[0]))
    crop = crop_bbox(ids > 0)
    start = time.perf_counter()
    fit = solve_camera(voxels, ids, crop)
    elapsed = time.perf_counter() - start
    print(f"solve_camera: 4 x ~20k voxels, {ids.shape[1]}x{ids.shape[0]} label map: {elapsed:.2f} s")
    assert fit.orientation == FRONT and fit.camera.kind == PERSPECTIVE and fit.mean_iou > 0.97
    points = centres(voxels)
    error = np.linalg.norm(fit.camera.project(points)[0] - truth.project(points)[0], axis=1)
    assert error.mean() < 3.0  # the upscaled map is only good to a block of 3 x 3 pixels
    assert elapsed < 8.0


def test_fit_to_dict_is_json():
    _truth, voxels, ids = render_case(ORTHOGRAPHIC, SIDE, (640, 480), 45.0)
    fit = solve_camera(voxels, ids, crop_bbox(ids > 0))
    data = json.loads(json.dumps(fit.to_dict()))
    assert set(data) == {"camera", "fit"}
    assert data["fit"]["orientation"] == SIDE
    assert data["fit"]["per_instance_iou"].keys() == {"3", "7", "12", "20"}
    assert data["fit"]["mean_iou"] == pytest.approx(fit.mean_iou)
    assert Camera.from_dict(data["camera"]).to_dict() == fit.camera.to_dict()
    assert isinstance(fit, CameraFit)


def test_default_camera_frames_the_crop():
    camera = default_camera((100.0, 50.0, 340.0, 290.0), (640, 480))
    assert camera.kind == ORTHOGRAPHIC
    (origin, top, right), _ = camera.project(np.array([[0, 0, 0], [0, 0, 0.5], [0.5, 0, 0]]))
    assert np.allclose(origin, (220, 170))
    assert np.allclose(right - origin, (240 / 1.2 / 2, 0)) and np.allclose(top - origin, (0, -240 / 1.2 / 2))


# ---- the camera model -----------------------------------------------------------------------------------

def test_orientations():
    assert ROTATIONS.shape == (24, 3, 3)
    assert np.allclose(np.linalg.det(ROTATIONS), 1)
    assert len({r.tobytes() for r in ROTATIONS}) == 24
    forward = {FRONT: (0, 1, 0), BACK: (0, -1, 0), SIDE: (-1, 0, 0), BELOW: (0, 0, 1), SIDE_LYING: (-1, 0, 0)}
    for index, direction in forward.items():
        assert np.array_equal(ROTATIONS[index][2], direction)
    assert np.array_equal(ROTATIONS[FRONT][1], (0, 0, -1))  # front view: z up in the image


def sample_cameras() -> list[Camera]:
    rng = np.random.default_rng(4)
    rotation = ROTATIONS[FRONT] @ rotation_about((1.0, 0.3, 0.2), 0.35)  # not only axis-aligned views
    return [
        Camera(PERSPECTIVE, rotation, (0.1, -0.05, 2.5), 900.0, (320.0, 240.0), (640, 480)),
        Camera(PERSPECTIVE, ROTATIONS[BACK], (-0.2, 0.1, 1.8), 1300.0, (250.5, 610.25), (600, 900)),
        Camera(ORTHOGRAPHIC, rotation, (0.05, 0.1, 2.0), 410.0, (350.0, 200.0), (640, 480)),
        Camera(ORTHOGRAPHIC, ROTATIONS[SIDE], (0.0, 0.0, 2.0), 700.0, (330.0, 530.0), (500, 1000)),
        Camera(PERSPECTIVE, ROTATIONS[int(rng.integers(24))], (0.0, 0.0, 3.0), 1000.0, (400.0, 400.0), (800, 800)),
    ]


def rotation_about(axis, angle: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def test_project_conventions():
    camera = Camera(PERSPECTIVE, np.eye(3), (0, 0, 2), 100.0, (50.0, 40.0), (100, 80))
    uv, depth = camera.project(np.array([[0, 0, 0], [0.2, 0.1, 0], [0, 0, 2]]))
    assert np.allclose(uv, [[50, 40], [60, 45], [50, 40]]) and np.allclose(depth, [2, 2, 4])
    assert np.allclose(camera.position, (0, 0, -2))


def test_camera_dict_round_trip():
    for camera in sample_cameras():
        data = json.loads(json.dumps(camera.to_dict()))
        again = Camera.from_dict(data)
        assert again.kind == camera.kind and again.image_size == camera.image_size
        assert np.allclose(again.rotation, camera.rotation) and np.allclose(again.translation, camera.translation)
        assert again.focal == camera.focal and again.principal == camera.principal
        assert again.to_dict() == data


BLENDER_PROJECT = textwrap.dedent("""
    import json, sys
    import bpy
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Matrix, Vector
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    result = []
    for case in json.loads(sys.stdin.read()):
        settings = case["blender"]
        data = bpy.data.cameras.new("camera")
        data.type = settings["type"]
        data.sensor_fit = settings["sensor_fit"]
        data.sensor_width, data.sensor_height = settings["sensor_width"], settings["sensor_height"]
        data.shift_x, data.shift_y = settings["shift_x"], settings["shift_y"]
        data.clip_start, data.clip_end = settings["clip_start"], settings["clip_end"]
        if data.type == "PERSP":
            data.lens = settings["lens"]
        else:
            data.ortho_scale = settings["ortho_scale"]
        camera = bpy.data.objects.new("camera", data)
        scene.collection.objects.link(camera)
        matrix = Matrix(settings["rotation_matrix"]).to_4x4()
        matrix.translation = Vector(settings["location"])
        camera.matrix_world = matrix
        scene.render.resolution_x, scene.render.resolution_y = settings["resolution"]
        scene.render.resolution_percentage = 100
        scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
        scene.camera = camera
        bpy.context.view_layer.update()
        result.append([list(world_to_camera_view(scene, camera, Vector(p))) for p in case["points"]])
    print("RESULT" + json.dumps(result))
""")


@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="bpy (Blender as a module) not installed")
def test_blender_camera_matches_projection():
    """The Blender settings reproduce `Camera.project` in real Blender: perspective and orthographic, landscape,
    portrait and square images, principal points off centre."""
    cameras = sample_cameras()
    points = np.random.default_rng(0).uniform(-0.5, 0.5, (12, 3))
    cases = [{"blender": camera.blender(), "points": points.tolist()} for camera in cameras]
    run = subprocess.run([sys.executable, "-c", BLENDER_PROJECT], input=json.dumps(cases), capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("RESULT")]
    for camera, reported in zip(cameras, json.loads(line[len("RESULT"):]), strict=True):
        seen = np.array(reported)
        width, height = camera.image_size
        uv, depth = camera.project(points)
        blender_uv = np.stack([seen[:, 0] * width, (1 - seen[:, 1]) * height], axis=1)
        assert np.allclose(blender_uv, uv, atol=1e-3), (camera.kind, camera.image_size, blender_uv - uv)
        assert np.allclose(seen[:, 2], depth, atol=1e-5)
        settings = camera.blender()
        assert settings["clip_start"] < depth.min() and depth.max() < settings["clip_end"]
