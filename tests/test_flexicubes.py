"""FlexiCubes mesh extraction: tables, reference parity, sparse = dense, memory scaling, edge cases."""

from __future__ import annotations

import itertools
import weakref

import pytest
import torch
from conftest import PARITY
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from iscene_server.geometry.flexicubes import ExtractedMesh, extract, extract_mesh
from iscene_server.geometry.flexicubes.tables import (
    CHECK_TABLE,
    CORNER_OFFSETS,
    DMC_TABLE,
    EDGE_CORNERS,
    NUM_VD_TABLE,
)

CORNERS = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
EDGES = [(0, 1), (1, 5), (4, 5), (0, 4), (2, 3), (3, 7), (6, 7), (2, 6), (2, 0), (3, 1), (7, 5), (6, 4)]


# ----------------------------------------------------------------------------------------------- tables

def _inside(case: int) -> list[bool]:
    return [bool(case >> k & 1) for k in range(8)]


def _crossed_edges(case: int) -> set[int]:
    inside = _inside(case)
    return {e for e, (a, b) in enumerate(EDGES) if inside[a] != inside[b]}


def _groups(case: int) -> list[frozenset[int]]:
    return [frozenset(e for e in row if e != -1) for row in DMC_TABLE[case] if any(e != -1 for e in row)]


def _faces() -> dict[tuple[int, int, int], list[int]]:
    """Outward normal of each cube face -> its 4 corners."""
    faces = {}
    for axis, side in itertools.product(range(3), (0, 1)):
        normal = [0, 0, 0]
        normal[axis] = 1 if side else -1
        faces[tuple(normal)] = [k for k in range(8) if CORNERS[k][axis] == side]
    return faces


FACES = _faces()


def _edge_faces(edge: int) -> set[tuple[int, int, int]]:
    a, b = EDGES[edge]
    return {normal for normal, corners in FACES.items() if a in corners and b in corners}


def _face_edges(normal: tuple[int, int, int]) -> list[int]:
    return [e for e in range(12) if normal in _edge_faces(e)]


def _corner_face_edges(corner: int, normal: tuple[int, int, int]) -> list[int]:
    return [e for e in _face_edges(normal) if corner in EDGES[e]]


def _is_ambiguous(case: int, normal: tuple[int, int, int]) -> bool:
    """A face whose two inside corners are diagonal (a checkerboard)."""
    inside = [k for k in FACES[normal] if _inside(case)[k]]
    return len(inside) == 2 and sum(p != q for p, q in zip(CORNERS[inside[0]], CORNERS[inside[1]], strict=True)) == 2


def _ambiguous_faces(case: int) -> list[tuple[int, int, int]]:
    return [normal for normal in FACES if _is_ambiguous(case, normal)]


def _face_connected(group: frozenset[int]) -> bool:
    edges = sorted(group)
    reached, frontier = {edges[0]}, [edges[0]]
    while frontier:
        edge = frontier.pop()
        for other in edges:
            if other not in reached and _edge_faces(edge) & _edge_faces(other):
                reached.add(other)
                frontier.append(other)
    return reached == set(edges)


def test_cube_conventions():
    assert tuple(CORNERS) == CORNER_OFFSETS
    assert tuple(EDGES) == EDGE_CORNERS
    for k, (x, y, z) in enumerate(CORNERS):
        assert k == x + 2 * y + 4 * z
    for a, b in EDGES:
        step = [q - p for p, q in zip(CORNERS[a], CORNERS[b], strict=True)]
        assert step in ([1, 0, 0], [0, -1, 0], [0, 0, 1])


def test_table_shapes_and_padding():
    assert len(DMC_TABLE) == len(NUM_VD_TABLE) == len(CHECK_TABLE) == 256
    for case in range(256):
        assert len(DMC_TABLE[case]) == 4 and all(len(row) == 7 for row in DMC_TABLE[case])
        assert len(CHECK_TABLE[case]) == 5
        for j, row in enumerate(DMC_TABLE[case]):
            members = [e for e in row if e != -1]
            assert list(row) == members + [-1] * (7 - len(members)), (case, j)
            assert all(0 <= e < 12 for e in members) and len(set(members)) == len(members)
            assert bool(members) == (j < NUM_VD_TABLE[case]), (case, j)


def test_dual_vertex_groups_partition_the_crossed_edges():
    for case in range(256):
        groups = _groups(case)
        assert NUM_VD_TABLE[case] == len(groups)
        assert sum(len(g) for g in groups) == len(frozenset().union(*groups)), f"case {case}: groups overlap"
        assert frozenset().union(*groups) == _crossed_edges(case), case
        assert all(_face_connected(g) for g in groups), case
    assert NUM_VD_TABLE[0] == NUM_VD_TABLE[255] == 0


def test_faces_are_cut_consistently():
    """A face cut once keeps its two crossed edges together; an ambiguous face separates its inside corners,
    except in the flagged cases, which join all four (one dual vertex) and are resolved via CHECK_TABLE."""
    for case in range(256):
        group_of = {e: j for j, g in enumerate(_groups(case)) for e in g}
        for normal in FACES:
            crossed = [e for e in _face_edges(normal) if e in _crossed_edges(case)]
            assert len(crossed) in (0, 2, 4)
            if len(crossed) == 2:
                assert group_of[crossed[0]] == group_of[crossed[1]], (case, normal)
            if len(crossed) == 4:
                assert _is_ambiguous(case, normal)
                inside = [k for k in FACES[normal] if _inside(case)[k]]
                around = [{group_of[e] for e in _corner_face_edges(k, normal)} for k in inside]
                if CHECK_TABLE[case][0] == 1:
                    assert len(around[0] | around[1]) == 1, (case, normal)
                else:
                    assert len(around[0]) == len(around[1]) == 1 and around[0] != around[1], (case, normal)


def test_complementary_cases():
    """c and 255-c cross the same edges; without an ambiguous face they also group them identically."""
    for case in range(256):
        assert _crossed_edges(case) == _crossed_edges(255 - case)
        same = set(_groups(case)) == set(_groups(255 - case))
        assert same == (not _ambiguous_faces(case)), case


def test_check_table():
    flagged = [case for case in range(256) if CHECK_TABLE[case][0] == 1]
    assert len(flagged) == 36
    for case in range(256):
        flag, dx, dy, dz, inverted = CHECK_TABLE[case]
        assert flag in (0, 1)
        if not flag:
            assert CHECK_TABLE[case] == (0, 0, 0, 0, 0)
            continue
        assert inverted == 255 - case
        assert CHECK_TABLE[inverted][0] == 0
        assert _crossed_edges(inverted) == _crossed_edges(case)
        assert NUM_VD_TABLE[case] == 1 and NUM_VD_TABLE[inverted] == 2
        assert _ambiguous_faces(case) == [(dx, dy, dz)], "the offset points through the one ambiguous face"


def test_flagged_neighbours_point_at_each_other():
    """If the cube across a flagged case's ambiguous face is flagged too, its check points back."""
    for case, other in itertools.product(range(256), repeat=2):
        if CHECK_TABLE[case][0] != 1 or CHECK_TABLE[other][0] != 1:
            continue
        normal = tuple(CHECK_TABLE[case][1:4])
        opposite = tuple(-n for n in normal)
        axis = [abs(n) for n in normal].index(1)
        shared = {CORNERS[k][:axis] + CORNERS[k][axis + 1:]: _inside(case)[k] for k in FACES[normal]}
        seen = {CORNERS[k][:axis] + CORNERS[k][axis + 1:]: _inside(other)[k] for k in FACES[opposite]}
        if shared == seen:
            assert tuple(CHECK_TABLE[other][1:4]) == opposite, (case, other)


# ------------------------------------------------------------------------------------- reference parity

@pytest.fixture(scope="module")
def mesh_vectors() -> dict[str, torch.Tensor]:
    return load_file(str(PARITY / "slat_dec_mesh.safetensors"))


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("variant, res", [("trellis", 32), ("iscene", 40)])
def test_matches_reference(mesh_vectors, variant, res, dense):
    coords = mesh_vectors["output.raw_coords"][:, 1:]
    feats = mesh_vectors["output.raw_feats"]
    before = feats.clone()
    mesh = extract_mesh(coords, feats, res, dense=dense)
    assert torch.equal(feats, before), "the input features must not be modified"
    assert mesh.faces.dtype == torch.int64 and mesh.vertices.dtype == mesh.vertex_attrs.dtype == torch.float32
    assert torch.equal(mesh.faces, mesh_vectors[f"output.{variant}.faces"].long())
    torch.testing.assert_close(mesh.vertices, mesh_vectors[f"output.{variant}.vertices"], atol=1e-5, rtol=0)
    torch.testing.assert_close(mesh.vertex_attrs, mesh_vectors[f"output.{variant}.vertex_attrs"], atol=1e-5, rtol=0)


def test_iscene_grid_is_the_trellis_grid_scaled_by_0_8(mesh_vectors):
    """Same voxels (coords 0..31), grid res 40 instead of 32: p_40 = 0.8 p_32 - 0.1, i.e. about [-0.5, 0.3]^3.

    The sdf bias (-1/res) is compensated in the input so that both grids see the same scalar field.
    """
    coords = mesh_vectors["output.raw_coords"][:, 1:]
    meshes = {}
    for res in (32, 40):
        feats = mesh_vectors["output.raw_feats"].clone()
        feats[:, 0:8] += 1.0 / res
        meshes[res] = extract_mesh(coords, feats, res)
    assert torch.equal(meshes[32].faces, meshes[40].faces)
    torch.testing.assert_close(meshes[40].vertices, 0.8 * meshes[32].vertices - 0.1, atol=1e-6, rtol=0)
    torch.testing.assert_close(meshes[40].vertex_attrs, meshes[32].vertex_attrs, atol=1e-6, rtol=0)
    assert meshes[40].vertices.min() >= -0.5 - 0.5 / 40 and meshes[40].vertices.max() <= 0.3 + 0.5 / 40


# ------------------------------------------------------------------------------------ sparse = dense

def _random_voxels(res: int, extent: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    count = max(1, int(extent ** 3 * fraction))
    keys = torch.randperm(extent ** 3, generator=generator)[:count]
    coords = torch.stack([keys // extent ** 2, keys // extent % extent, keys % extent], dim=1)
    return coords, 2 * torch.randn(count, 101, generator=generator)


def _sphere_voxels(res: int, radius: float, centre: tuple[float, float, float], seed: int,
                   solid: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxels within 1.5 of a sphere (or the whole ball); each corner's sdf is the vertex's scaled signed distance.

    A shell has a second surface on its inner side, where the untouched vertices default to sdf = 1 (outside).
    """
    axis = torch.arange(res)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    centre_t = torch.tensor(centre)
    distance = ((grid + 0.5 - centre_t) ** 2).sum(-1).sqrt() - radius
    coords = grid[distance < 1.5] if solid else grid[distance.abs() < 1.5]
    corners = (coords[:, None, :] + torch.tensor(CORNERS)).float()
    generator = torch.Generator().manual_seed(seed)
    feats = 0.5 * torch.randn(coords.shape[0], 101, generator=generator)
    feats[:, 0:8] = (((corners - centre_t) ** 2).sum(-1).sqrt() - radius) / res
    return coords, feats


@pytest.fixture
def inversion_spy(monkeypatch) -> list[int]:
    """Records how many cubes each extraction's ambiguity resolution inverted."""
    counts: list[int] = []
    original = extract._resolve_ambiguity

    def spy(cases, keys, res, dense):
        resolved = original(cases, keys, res, dense)
        counts.append(int((resolved != cases).sum()))
        return resolved

    monkeypatch.setattr(extract, "_resolve_ambiguity", spy)
    return counts


def _assert_same_mesh(a: ExtractedMesh, b: ExtractedMesh) -> None:
    assert torch.equal(a.faces, b.faces)
    torch.testing.assert_close(a.vertices, b.vertices, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.vertex_attrs, b.vertex_attrs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("res, extent, fraction, seed", [
    (6, 6, 0.9, 0), (8, 8, 0.4, 1), (12, 12, 0.15, 2), (20, 16, 0.3, 3), (33, 20, 0.05, 4),
])
def test_sparse_equals_dense_on_random_voxels(res, extent, fraction, seed, inversion_spy):
    coords, feats = _random_voxels(res, extent, fraction, seed)
    sparse = extract_mesh(coords, feats, res)
    dense = extract_mesh(coords, feats, res, dense=True)
    _assert_same_mesh(sparse, dense)
    assert sparse.faces.shape[0] > 0
    assert inversion_spy[0] == inversion_spy[1] > 0, "no ambiguous pair was inverted"
    if extent == res:
        assert coords.min() == 0 and coords.max() == res - 1, "the voxels should touch the grid boundary"


@pytest.mark.parametrize("res, radius, centre", [
    (24, 7.0, (12.0, 12.0, 12.0)), (32, 9.5, (3.0, 16.0, 29.5)), (40, 12.0, (20.0, 20.0, 20.0)),
])
def test_sparse_equals_dense_on_a_sphere(res, radius, centre):
    coords, feats = _sphere_voxels(res, radius, centre, seed=res)
    sparse = extract_mesh(coords, feats, res)
    _assert_same_mesh(sparse, extract_mesh(coords, feats, res, dense=True))
    assert sparse.faces.shape[0] > 100


def test_a_ball_gives_a_closed_outward_surface():
    """Radius 10.25: no grid vertex has sdf exactly 0 (see `_triangulate` for what the reference does then)."""
    res, radius = 32, 10.25
    coords, feats = _sphere_voxels(res, radius, (16.0, 16.0, 16.0), seed=0, solid=True)
    mesh = extract_mesh(coords, feats, res)
    edges = torch.cat([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]])
    undirected_counts = torch.unique(torch.sort(edges, dim=1).values, dim=0, return_counts=True)[1]
    assert bool((undirected_counts == 2).all()), "every edge of a closed surface is shared by two triangles"
    assert torch.unique(edges, dim=0).shape[0] == edges.shape[0], "consistent winding: no directed edge repeats"
    v0, v1, v2 = mesh.vertices[mesh.faces].unbind(dim=1)
    volume = float(torch.linalg.vecdot(v0, torch.cross(v1, v2, dim=1)).sum()) / 6
    expected = 4 / 3 * torch.pi * ((radius + 1) / res) ** 3
    assert abs(volume / expected - 1) < 0.1, "faces point towards positive sdf (outwards)"
    distance = (mesh.vertices - (16 / res - 0.5)).norm(dim=1) * res
    assert float((distance - (radius + 1)).abs().max()) < 1.0


def _pair_voxels(origin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxels at x = origin (case 61, checks +x) and origin + 1 (case 62, checks -x): one shared ambiguous face."""
    inside = {(0, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (2, 0, 0), (2, 1, 0), (2, 0, 1)}
    coords = torch.tensor([[origin, 0, 0], [origin + 1, 0, 0]])
    feats = torch.zeros(2, 101)
    for voxel, (k, (x, y, z)) in itertools.product(range(2), enumerate(CORNERS)):
        feats[voxel, k] = -0.5 if (x + voxel, y, z) in inside else 0.5
    return coords, feats


@pytest.fixture
def case_spy(monkeypatch) -> list[dict[int, int]]:
    """Records, per extraction, the resolved case of every surface cube by cube key."""
    seen: list[dict[int, int]] = []
    original = extract._dual_vertices

    def record(surface, cases, *args):
        seen.append(dict(zip(surface.keys.tolist(), cases.tolist(), strict=True)))
        return original(surface, cases, *args)

    monkeypatch.setattr(extract, "_dual_vertices", record)
    return seen


@pytest.mark.parametrize("dense", [False, True])
def test_ambiguous_neighbours_are_both_inverted(dense, case_spy):
    res = 4
    coords, feats = _pair_voxels(origin=1)
    extract_mesh(coords, feats, res, dense=dense)
    assert case_spy[0][(1 * res + 0) * res + 0] == 255 - 61
    assert case_spy[0][(2 * res + 0) * res + 0] == 255 - 62


@pytest.mark.parametrize("origin", [1, 3])
def test_an_ambiguous_cube_alone_is_not_inverted(origin, case_spy):
    """Alone, the case-61 cube's +x neighbour is not flagged (origin 1) or lies outside the grid (origin 3)."""
    res = 4
    coords, feats = _pair_voxels(origin)
    sparse = extract_mesh(coords[:1], feats[:1], res)
    _assert_same_mesh(sparse, extract_mesh(coords[:1], feats[:1], res, dense=True))
    assert case_spy[0][(origin * res + 0) * res + 0] == case_spy[1][(origin * res + 0) * res + 0] == 61


# ------------------------------------------------------------------------------------------ edge cases

@pytest.mark.parametrize("dense", [False, True])
def test_no_voxels_give_an_empty_mesh(dense):
    mesh = extract_mesh(torch.zeros((0, 3), dtype=torch.int32), torch.zeros((0, 101)), 16, dense=dense)
    assert mesh.vertices.shape == (0, 3) and mesh.faces.shape == (0, 3) and mesh.vertex_attrs.shape == (0, 6)
    assert mesh.faces.dtype == torch.int64


@pytest.mark.parametrize("dense", [False, True])
def test_no_surface_gives_an_empty_mesh(dense):
    """Every corner outside (like the untouched defaults): no cube crosses the surface."""
    coords = torch.tensor([[3, 4, 5], [3, 4, 6], [7, 7, 7]])
    feats = torch.randn(3, 101, generator=torch.Generator().manual_seed(0))
    feats[:, 0:8] = 1.0
    mesh = extract_mesh(coords, feats, 16, dense=dense)
    assert mesh.vertices.shape == (0, 3) and mesh.faces.shape == (0, 3) and mesh.vertex_attrs.shape == (0, 6)


def test_invalid_inputs_are_rejected():
    feats = torch.zeros(2, 101)
    with pytest.raises(ValueError, match="unique"):
        extract_mesh(torch.tensor([[1, 2, 3], [1, 2, 3]]), feats, 8)
    with pytest.raises(ValueError, match="lie in"):
        extract_mesh(torch.tensor([[1, 2, 3], [1, 2, 8]]), feats, 8)
    with pytest.raises(ValueError, match="feats"):
        extract_mesh(torch.tensor([[1, 2, 3], [1, 2, 4]]), torch.zeros(2, 100), 8)


# -------------------------------------------------------------------------------------------- memory

class _TensorBytes(TorchDispatchMode):
    """Counts the storage bytes of every tensor produced by a torch op: peak live total and largest single one.

    A storage is live while any tensor produced on it is referenced; the inputs are not counted.
    """

    def __init__(self, *inputs: torch.Tensor):
        super().__init__()
        self._ignored = {t.untyped_storage().data_ptr() for t in inputs}
        self._bytes: dict[int, int] = {}
        self._holders: dict[int, int] = {}
        self._refs: list[weakref.ref] = []
        self.live = self.peak = self.largest = 0

    def _release(self, key: int) -> None:
        self._holders[key] -= 1
        if self._holders[key] == 0:
            self.live -= self._bytes.pop(key)
            del self._holders[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self._ignored:
                continue
            if key not in self._bytes:
                self._bytes[key], self._holders[key] = storage.nbytes(), 0
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                self.largest = max(self.largest, storage.nbytes())
            self._holders[key] += 1
            self._refs.append(weakref.ref(tensor, lambda _, key=key: self._release(key)))
        return out


def _block(side: int, origin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A solid block of side^3 voxels with random features (almost every cube is a surface cube)."""
    axis = torch.arange(side) + origin
    coords = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    return coords, torch.randn(coords.shape[0], 101, generator=torch.Generator().manual_seed(side))


def _tensor_bytes(coords: torch.Tensor, feats: torch.Tensor, res: int, dense: bool = False) -> _TensorBytes:
    counter = _TensorBytes(coords, feats)
    with counter:
        extract_mesh(coords, feats, res, dense=dense)
    return counter


def test_sparse_memory_does_not_grow_with_res_and_grows_linearly_with_voxels():
    coords, feats = _block(12, origin=100)
    at_256 = _tensor_bytes(coords, feats, 256)
    at_1024 = _tensor_bytes(coords, feats, 1024)
    assert at_1024.peak < 1.05 * at_256.peak and at_1024.largest <= at_256.largest
    assert at_256.peak < 4000 * coords.shape[0], "about 3.4 kB per voxel expected"

    more_coords, more_feats = _block(24, origin=100)
    ratio = _tensor_bytes(more_coords, more_feats, 256).peak / at_256.peak
    assert 4 < ratio < 12, f"8x the voxels took {ratio:.1f}x the memory"


def test_dense_memory_grows_with_the_grid():
    """The counter sees the reference layout's O(res^3) grids (so the sparse figures above are meaningful)."""
    coords, feats = _block(6, origin=2)
    at_16, at_32 = _tensor_bytes(coords, feats, 16, dense=True), _tensor_bytes(coords, feats, 32, dense=True)
    assert at_32.peak > 6 * at_16.peak and at_32.largest >= 8 * 33 ** 3 * 8
