"""Proxy meshes from stage-1 occupancy (geometry/proxy.py): the face cap, a closed outward surface whose
enclosed volume is exactly the pooled cells', the finest grid that fits, and nothing for an empty occupancy."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from iscene_server.geometry.glb_reader import read_glb, read_instance_mesh
from iscene_server.geometry.glb_writer import write_instance_glb
from iscene_server.geometry.proxy import POOLED_GRIDS, PROXY_MAX_FACES, face_count, pooled, proxy_mesh
from iscene_server.geometry.voxels import GRID


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    v = vertices[faces].astype(np.float64)  # [F, 3, 3]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6)


def directed_edges(faces: np.ndarray) -> Counter:
    return Counter(map(tuple, np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).tolist()))


def assert_closed_and_outward(mesh, cells: int, grid: int) -> None:
    """Every directed edge is matched by its reverse (closed, consistently wound), and the signed volume is the
    cells' volume (positive: the normals point out)."""
    edges = directed_edges(mesh.faces)
    assert all(edges[(b, a)] == count for (a, b), count in edges.items())
    assert signed_volume(mesh.vertices, mesh.faces) == pytest.approx(cells / grid ** 3, rel=1e-5)


def sphere_shell(radius: float, thickness: float = 1.5) -> np.ndarray:
    """Cells of the 64^3 grid within ``thickness`` of a sphere: a stage-1-like surface occupancy."""
    centres = np.argwhere(np.ones((GRID,) * 3, bool)) + 0.5 - GRID / 2
    distance = np.abs(np.linalg.norm(centres, axis=1) - radius)
    return (np.argwhere(np.ones((GRID,) * 3, bool))[distance < thickness]).astype(np.int16)


def test_a_small_object_keeps_the_full_resolution_and_is_a_closed_outward_surface():
    coords = (np.argwhere(np.ones((3, 2, 4), bool)) + [10, 20, 30]).astype(np.int16)
    mesh = proxy_mesh(coords)
    assert mesh.face_count == 2 * 2 * (3 * 2 + 2 * 4 + 3 * 4)  # the box's six sides, two triangles per cell face
    assert_closed_and_outward(mesh, len(coords), GRID)
    np.testing.assert_allclose(mesh.vertices.min(0), np.array([10, 20, 30]) / GRID - 0.5, atol=1e-7)
    np.testing.assert_allclose(mesh.vertices.max(0), np.array([13, 22, 34]) / GRID - 0.5, atol=1e-7)
    assert np.allclose(mesh.colors, mesh.colors[0]) and 0.5 < mesh.colors[0, 0] < 1  # one flat light grey


def test_a_big_occupancy_is_pooled_to_the_finest_grid_under_the_face_cap():
    coords = sphere_shell(radius=28)
    assert face_count(pooled(coords, GRID)) > PROXY_MAX_FACES  # the full-resolution surface is far over the cap
    mesh = proxy_mesh(coords)
    assert 0 < mesh.face_count <= PROXY_MAX_FACES
    grid = next(g for g in POOLED_GRIDS if face_count(pooled(coords, g)) <= PROXY_MAX_FACES)
    finer = POOLED_GRIDS[POOLED_GRIDS.index(grid) - 1]
    assert face_count(pooled(coords, finer)) > PROXY_MAX_FACES  # it is the finest that fits
    assert mesh.face_count == face_count(pooled(coords, grid))
    assert_closed_and_outward(mesh, int(pooled(coords, grid).sum()), grid)
    # pooling by "any": the coarse cells cover every occupied fine cell, so the proxy never shrinks the object
    np.testing.assert_allclose(mesh.vertices.min(0), np.floor(coords.min(0) / (GRID // grid)) / grid - 0.5)


def test_a_scattered_occupancy_over_the_cap_even_at_8_cubed_still_fits():
    cells = np.argwhere(np.ones((8, 8, 8), bool))
    checker = cells[cells.sum(1) % 2 == 0] * 8  # one fine cell in every other 8^3 cell: a 3D checkerboard
    assert face_count(pooled(checker.astype(np.int16), 8)) > PROXY_MAX_FACES
    mesh = proxy_mesh(checker.astype(np.int16))
    assert mesh.face_count <= PROXY_MAX_FACES
    edges = directed_edges(mesh.faces)
    assert all(edges[(b, a)] == count for (a, b), count in edges.items())


def test_an_empty_occupancy_has_no_proxy():
    assert proxy_mesh(np.zeros((0, 3), np.int16)) is None


def test_the_proxy_glb_round_trips_in_the_scene_frame_with_its_extras(tmp_path):
    coords = sphere_shell(radius=10)
    mesh = proxy_mesh(coords)
    path = write_instance_glb(tmp_path / "proxy_3.glb", mesh, label=3, seed=11, model_ids={"iscene": "tiny"},
                              extras={"proxy": True}, normals=False)
    back = read_instance_mesh(path.read_bytes())
    np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-7)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    gltf, _ = read_glb(path.read_bytes())
    assert gltf["nodes"][0]["extras"] == {"label": 3, "seed": 11, "models": {"iscene": "tiny"}, "proxy": True}


def test_the_writer_lists_no_proxy_for_an_empty_object_and_removes_a_stale_one(tmp_path):
    from types import SimpleNamespace

    import torch

    from iscene_server.engine.pipeline import Stage1Result
    from iscene_server.engine.results import SceneWriter
    from iscene_server.engine.stage1 import InstanceStructure, SceneStructure

    (tmp_path / "proxy_2.glb").write_bytes(b"from an earlier scene")
    latent = torch.zeros(8, 16, 16, 16)
    instances = [InstanceStructure(1, 7, latent, sphere_shell(radius=6)),
                 InstanceStructure(2, 7, latent, np.zeros((0, 3), np.int16))]
    slots = SimpleNamespace(image_size=(64, 48), scene_box=(0.0, 0.0, 64.0, 64.0))
    first = Stage1Result(slots, SceneStructure(7, latent, instances), {"steps": 2}, {}, None)
    manifest = SceneWriter(tmp_path, {"models": {"iscene": "tiny"}}).write_stage1(first)
    full, empty = manifest["instances"]
    assert full["proxy"] == "proxy_1.glb" and (tmp_path / "proxy_1.glb").is_file()
    assert empty["proxy"] is None and not (tmp_path / "proxy_2.glb").exists()
    assert empty["origin"] is None and full["origin"] == full["bbox"]["origin"]
    assert manifest["stage"] == "layout" and manifest["stages"] == 1 and full["file"] is None
