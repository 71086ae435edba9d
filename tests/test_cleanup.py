"""CPU work beside the GPU: floaters through scipy's connected components, colours through the library's
collapse mapping, and the worker pool (byte-identical results, failures, cancellation)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import fast_simplification
import numpy as np
import pytest
from test_geometry_export import merge, uv_sphere

from iscene_server.engine.cleanup import CleanupPool, CleanupTask, clean_mesh
from iscene_server.errors import Cancelled, ISceneError
from iscene_server.geometry.postprocess import ColoredMesh, decimate, postprocess, vertex_components


def flood_fill_components(faces: np.ndarray, vertex_count: int) -> np.ndarray:
    """Oracle: breadth-first search from each unvisited vertex in increasing order over the face edges."""
    neighbours = [[] for _ in range(vertex_count)]
    for a, b, c in faces:
        for u, v in ((a, b), (b, c), (a, c)):
            neighbours[u].append(v)
            neighbours[v].append(u)
    component = np.full(vertex_count, -1)
    for start in range(vertex_count):
        if component[start] < 0:
            component[start], frontier = start, [start]
            while frontier:
                frontier = [v for u in frontier for v in neighbours[u] if component[v] < 0 and
                            not component.__setitem__(v, start)]
    return component


@pytest.mark.parametrize("seed, vertices, faces", [(0, 50, 10), (1, 2000, 600), (2, 3000, 2500), (3, 500, 2000)])
def test_components_match_a_flood_fill_on_random_meshes(seed, vertices, faces):
    tri = np.random.default_rng(seed).integers(0, vertices, size=(faces, 3))
    assert np.array_equal(vertex_components(tri, vertices), flood_fill_components(tri, vertices))


def test_components_of_a_mesh_without_faces_are_its_vertices():
    assert np.array_equal(vertex_components(np.zeros((0, 3), dtype=np.int64), 4), np.arange(4))


@pytest.mark.parametrize("rings, segments, target", [(30, 40, 500), (40, 50, 800)])
def test_each_surviving_vertex_gets_the_mean_colour_of_the_vertices_merged_into_it(rings, segments, target):
    """Oracle: replay the collapse record one pair at a time; the survivors, numbered in original order,
    are the output vertices (on these meshes every collapse root keeps a face)."""
    vertices, faces = uv_sphere(rings, segments, noise=0.02)
    colours = np.random.default_rng(7).random((len(vertices), 3)).astype(np.float32)
    small = decimate(ColoredMesh(vertices, faces, colours), target)

    _, _, collapses = fast_simplification.simplify(vertices.astype(np.float64), faces, target_count=target,
                                                   return_collapses=True)
    parent = list(range(len(vertices)))
    for keep, gone in collapses:
        parent[gone] = keep

    def root(x):
        while parent[x] != x:
            x = parent[x]
        return x

    roots = np.array([root(x) for x in range(len(vertices))])
    survivors = np.unique(roots)
    assert len(survivors) == small.vertex_count
    expected = np.stack([colours[roots == s].mean(0) for s in survivors])
    np.testing.assert_allclose(small.colors, expected, rtol=0, atol=1e-6)
    # surviving vertices that merged nothing keep their own colour exactly
    alone = [i for i, s in enumerate(survivors) if np.count_nonzero(roots == s) == 1]
    assert alone and np.array_equal(small.colors[alone], colours[survivors[alone]])


def noisy_scene_meshes() -> list[ColoredMesh]:
    meshes = []
    for seed in range(3):
        body = uv_sphere(40 + 10 * seed, 50, noise=0.02, seed=seed)
        floater = uv_sphere(3, 4, centre=(0.45, 0, 0), radius=0.01)
        vertices, faces = merge(body, floater)
        colours = np.random.default_rng(seed).random((len(vertices), 3)).astype(np.float32)
        meshes.append(ColoredMesh(vertices, faces, colours))
    return meshes


def task_for(label: int, mesh: ColoredMesh) -> CleanupTask:
    return CleanupTask(label, mesh, min_fraction=0.02, target_faces=900)


@pytest.fixture
def pool():
    workers = CleanupPool(2)
    yield workers
    workers.close()


def never_cancelled() -> None:
    return None


def torch_loaded() -> bool:
    return "torch" in sys.modules


def test_pooled_clean_up_is_byte_identical_to_inline(pool):
    meshes = noisy_scene_meshes()
    futures = [pool.submit(clean_mesh, task_for(i, m)) for i, m in enumerate(meshes)]
    for mesh, future in zip(meshes, futures, strict=True):
        pooled = pool.result(future, "mesh clean-up", never_cancelled).value
        inline = postprocess(mesh, min_fraction=0.02, target_faces=900)
        for name in ("vertices", "faces", "colors"):
            assert getattr(pooled, name).tobytes() == getattr(inline, name).tobytes()
        assert pooled.face_count <= 900


def test_workers_do_not_import_torch(pool):
    pool.result(pool.submit(clean_mesh, task_for(1, noisy_scene_meshes()[0])), "mesh clean-up", never_cancelled)
    assert pool.result(pool.submit(torch_loaded), "import check", never_cancelled) is False


def test_inline_mode_runs_the_same_work_without_workers():
    inline = CleanupPool(0)
    mesh = noisy_scene_meshes()[0]
    cleaned = inline.result(inline.submit(clean_mesh, task_for(1, mesh)), "mesh clean-up", never_cancelled)
    assert cleaned.value.faces.tobytes() == postprocess(mesh, min_fraction=0.02, target_faces=900).faces.tobytes()


def test_an_exception_in_a_task_fails_with_a_clear_error(pool):
    broken = CleanupTask(3, ColoredMesh(np.zeros((3, 3)), [[0, 1, 2]], np.zeros((3, 3))), 0.02, 0)
    with pytest.raises(ISceneError, match="mesh clean-up of instance 3 failed: ValueError: target_faces") as error:
        pool.result(pool.submit(clean_mesh, broken), "mesh clean-up of instance 3", never_cancelled)
    assert error.value.code == "worker_failed"
    assert pool.result(pool.submit(torch_loaded), "import check", never_cancelled) is False  # pool still works


def test_a_dead_worker_fails_the_job_and_the_pool_is_rebuilt(pool):
    with pytest.raises(ISceneError, match="worker process doing the mesh clean-up died") as error:
        pool.result(pool.submit(os._exit, 1), "mesh clean-up", never_cancelled)
    assert error.value.code == "worker_failed" and "out of memory" in error.value.hint
    assert pool.result(pool.submit(torch_loaded), "import check", never_cancelled) is False


def wait_for_file(path: str) -> str:
    """A slow task that ends when the test says so."""
    while not Path(path).exists():
        time.sleep(0.01)
    return path


def test_cancel_while_waiting_on_a_slow_clean_up_returns_without_it(pool, tmp_path):
    release = tmp_path / "release"
    slow = pool.submit(wait_for_file, str(release))
    queued = [pool.submit(wait_for_file, str(release)) for _ in range(8)]  # more than the workers take
    checks = []

    def cancel_on_second_look():
        checks.append(None)
        if len(checks) == 2:
            raise Cancelled()

    try:
        with pytest.raises(Cancelled):
            pool.result(slow, "mesh clean-up", cancel_on_second_look)
        assert not slow.done()  # it returned while the clean-up was still running
        pool.cancel(queued)
        assert sum(f.cancelled() for f in queued) >= 1  # work that had not started is dropped
    finally:
        release.touch()
    assert pool.result(slow, "mesh clean-up", never_cancelled) == str(release)
