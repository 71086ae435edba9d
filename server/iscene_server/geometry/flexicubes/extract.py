"""FlexiCubes mesh extraction from the SLat mesh decoder's per-voxel output, computed sparsely.

This reproduces TRELLIS ``SparseFeatures2Mesh`` followed by FlexiCubes in inference mode (no QEF solve, no
regulariser) exactly, including the ordering of vertices and faces. The reference scatters the voxel features
into dense ``(res+1)^3`` vertex and ``res^3`` cube grids; here only the cubes that can reach the surface (the
voxel set dilated by one cube) are ever built, so memory grows with the number of voxels, not with ``res``.
Every ordering the reference derives from dense grid ids is reproduced by keeping the same linear ids as sorted
int64 keys:

* vertex key ``(x*(res+1) + y)*(res+1) + z``, cube key ``(x*res + y)*res + z``;
* untouched vertices read sdf 1, deform 0, colour 0; cubes without a voxel read all-zero weights.

``extract_mesh(..., dense=True)`` builds the dense grids like the reference (for benchmarks) and then runs the
same FlexiCubes stages, so both modes give identical results.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .tables import CHECK_TABLE, CORNER_OFFSETS, DMC_TABLE, EDGE_CORNERS, NUM_VD_TABLE

FEATURE_CHANNELS = 101
"""Per voxel: sdf 0:8, deform 8:32 (8x3), weights 32:53 (21), colour 53:101 (8x6), corners in CORNER_OFFSETS order."""

WEIGHT_SCALE = 0.99
COLOR_CHANNELS = 6

_VERTEX_CHANNELS = 1 + 3 + COLOR_CHANNELS
_QUAD_FLIPPED = (0, 1, 3, 2)
_QUAD_KEPT = (2, 3, 1, 0)
_SPLIT_02 = (0, 1, 2, 0, 2, 3)
_SPLIT_13 = (0, 1, 3, 3, 1, 2)


@dataclass
class ExtractedMesh:
    """A triangle mesh with per-vertex attributes, in the decoder's object frame (see ``extract_mesh``)."""

    vertices: torch.Tensor
    """float32 ``[V, 3]``."""
    faces: torch.Tensor
    """int64 ``[F, 3]``, indices into ``vertices``."""
    vertex_attrs: torch.Tensor
    """float32 ``[V, 6]``: sigmoid colour, 3 RGB + 3 "normal" channels."""


@dataclass
class _SurfaceCubes:
    """The surface cubes of the grid (ascending cube key) and the vertex table their corners index."""

    keys: torch.Tensor
    """int64 ``[S]`` cube keys, ascending."""
    cases: torch.Tensor
    """int64 ``[S]`` case ids ``sum_k occupied_k * 2^k`` before ambiguity resolution."""
    corners: torch.Tensor
    """int64 ``[S, 8]`` rows of the vertex table; row order is ascending vertex key."""
    weights: torch.Tensor
    """float32 ``[S, 21]`` raw FlexiCubes weights (beta 0:12, alpha 12:20, gamma 20)."""
    sdf: torch.Tensor
    """float32 ``[U]`` vertex scalar field (biased; negative = inside)."""
    positions: torch.Tensor
    """float32 ``[U, 3]`` deformed vertex positions."""
    colors: torch.Tensor
    """float32 ``[U, 6]`` vertex colours after the sigmoid."""


@dataclass
class _Edges:
    """The unique edges of the surface cubes, and per (cube, edge slot) which surface edge it is."""

    first: torch.Tensor
    """int64 ``[E]`` first stored endpoint (vertex table row) of each surface edge, in surface-edge order."""
    slot_edge: torch.Tensor
    """int64 ``[S, 12]`` surface-edge index of each cube edge, -1 where the edge is not a surface edge."""
    slot_count: torch.Tensor
    """int64 ``[S, 12]`` number of surface cubes sharing each cube edge."""


@dataclass
class _DualVertices:
    """The output vertices, numbered as the reference numbers them."""

    positions: torch.Tensor
    """float32 ``[D, 3]``."""
    colors: torch.Tensor
    """float32 ``[D, 6]``."""
    gamma: torch.Tensor
    """float32 ``[D]``: the normalised gamma of each dual vertex's cube (decides how quads are split)."""
    slot_vertex: torch.Tensor
    """int64 ``[S, 12]``: the dual vertex each cube edge belongs to (0 where it belongs to none)."""


def extract_mesh(coords: torch.Tensor, feats: torch.Tensor, res: int, *, dense: bool = False) -> ExtractedMesh:
    """Extract the FlexiCubes mesh of one object from the mesh decoder's voxels.

    Args:
        coords: int ``[N, 3]`` voxel coordinates ``(x, y, z)``, unique, each in ``[0, res)``.
        feats: float ``[N, 101]`` raw head output per voxel (see ``FEATURE_CHANNELS``).
        res: FlexiCubes grid resolution: 256 for TRELLIS (4 * 64), 320 for the I-Scene release (5 * 64).
        dense: build the full dense grids like the reference (memory O(res^3); for benchmarks only).

    Returns:
        The mesh on the device of ``feats``. A grid vertex ``v`` lies at ``v / res - 0.5`` plus a deformation of
        at most half a cell, so vertices are in the z-up object frame of the grid: with ``res = 256`` and voxel
        coordinates in 0..255 the mesh spans about ``[-0.5, 0.5]^3``; with the I-Scene ``res = 320`` and the same
        coordinates it spans about ``[-0.5, 0.3]^3`` (``0.8 * p_trellis - 0.1``), which is what I-Scene exports.
        Empty tensors when no cube crosses the surface.
    """
    device = feats.device
    coords = coords.to(device=device, dtype=torch.int64)
    feats = feats.to(torch.float32)
    _check_inputs(coords, feats, res)
    voxel_keys, order = torch.sort(_cube_keys(coords, res))
    if bool((voxel_keys[1:] == voxel_keys[:-1]).any()):
        raise ValueError("voxel coordinates must be unique")
    weights = feats[order, 32:53]
    vertex_keys, vertex_values = _touched_vertices(coords, feats, res)
    if dense:
        surface = _dense_surface_cubes(vertex_keys, vertex_values, voxel_keys, weights, res)
    else:
        surface = _sparse_surface_cubes(vertex_keys, vertex_values, voxel_keys, weights, res)
    if surface.keys.numel() == 0:
        return _empty_mesh(device)
    return _flexicubes(surface, res, dense)


def _check_inputs(coords: torch.Tensor, feats: torch.Tensor, res: int) -> None:
    if coords.dim() != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be [N, 3], got {tuple(coords.shape)}")
    if feats.shape != (coords.shape[0], FEATURE_CHANNELS):
        raise ValueError(f"feats must be [{coords.shape[0]}, {FEATURE_CHANNELS}], got {tuple(feats.shape)}")
    if coords.numel() and (coords.min() < 0 or coords.max() >= res):
        raise ValueError(f"voxel coordinates must lie in [0, {res})")


def _empty_mesh(device: torch.device) -> ExtractedMesh:
    return ExtractedMesh(
        vertices=torch.zeros((0, 3), dtype=torch.float32, device=device),
        faces=torch.zeros((0, 3), dtype=torch.int64, device=device),
        vertex_attrs=torch.zeros((0, COLOR_CHANNELS), dtype=torch.float32, device=device),
    )


@functools.cache
def _table(name: str, device: torch.device) -> torch.Tensor:
    """One of the lookup tables as an int64 tensor on ``device`` (built once per device)."""
    data = {
        "corner_offsets": CORNER_OFFSETS, "edge_corners": EDGE_CORNERS,
        "dmc": DMC_TABLE, "num_vd": NUM_VD_TABLE, "check": CHECK_TABLE,
    }[name]
    return torch.tensor(data, dtype=torch.int64, device=device)


def _corner_offsets(device: torch.device) -> torch.Tensor:
    return _table("corner_offsets", device)


def _edge_corners(device: torch.device) -> torch.Tensor:
    return _table("edge_corners", device)


def _cube_keys(xyz: torch.Tensor, res: int) -> torch.Tensor:
    return (xyz[..., 0] * res + xyz[..., 1]) * res + xyz[..., 2]


def _cube_coords(keys: torch.Tensor, res: int) -> torch.Tensor:
    return torch.stack([keys // (res * res), (keys // res) % res, keys % res], dim=-1)


def _vertex_keys(xyz: torch.Tensor, res: int) -> torch.Tensor:
    side = res + 1
    return (xyz[..., 0] * side + xyz[..., 1]) * side + xyz[..., 2]


def _vertex_coords(keys: torch.Tensor, res: int) -> torch.Tensor:
    side = res + 1
    return torch.stack([keys // (side * side), (keys // side) % side, keys % side], dim=-1)


def _touched_vertices(coords: torch.Tensor, feats: torch.Tensor, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the per-corner ``[sdf, deform, colour]`` of every voxel onto the grid vertices it touches.

    Returns the touched vertex keys (ascending) and their ``[V, 10]`` values. Contributions are reduced in input
    voxel order with ``scatter_reduce('mean')``, as the reference does, so the values match it bit for bit.
    """
    count = coords.shape[0]
    sdf = feats[:, 0:8].reshape(count, 8, 1) + (-1.0 / res)
    deform = feats[:, 8:32].reshape(count, 8, 3)
    color = feats[:, 53:101].reshape(count, 8, COLOR_CHANNELS)
    values = torch.cat([sdf, deform, color], dim=-1).reshape(count * 8, _VERTEX_CHANNELS)
    corner_keys = _vertex_keys(coords[:, None, :] + _corner_offsets(coords.device), res).reshape(-1)
    keys, inverse = torch.unique(corner_keys, return_inverse=True)
    reduced = torch.zeros((keys.shape[0], _VERTEX_CHANNELS), dtype=torch.float32, device=coords.device)
    index = inverse[:, None].expand(-1, _VERTEX_CHANNELS)
    return keys, reduced.scatter_reduce(0, index, values, reduce="mean", include_self=False)


def _deformed_positions(xyz: torch.Tensor, deform: torch.Tensor, res: int) -> torch.Tensor:
    """``v / res - 0.5 + (1 - 1e-8) / (2 res) * tanh(deform)``, in the reference's operation order."""
    return xyz / res - 0.5 + (1 - 1e-8) / (res * 2) * torch.tanh(deform)


def _vertex_table(
    keys: torch.Tensor, values: torch.Tensor, res: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sdf, positions, sigmoid colours) of vertices with the given keys and raw ``[V, 10]`` values."""
    positions = _deformed_positions(_vertex_coords(keys, res), values[:, 1:4], res)
    return values[:, 0].contiguous(), positions, torch.sigmoid(values[:, 4:])


def _lookup(sorted_keys: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``queries`` in ``sorted_keys`` (clamped) and whether each query was found."""
    if sorted_keys.numel() == 0:
        zeros = torch.zeros_like(queries)
        return zeros, zeros.bool()
    rows = torch.searchsorted(sorted_keys, queries).clamp_(max=sorted_keys.numel() - 1)
    return rows, sorted_keys[rows] == queries


def _default_vertex_values(count: int, device: torch.device) -> torch.Tensor:
    values = torch.zeros((count, _VERTEX_CHANNELS), dtype=torch.float32, device=device)
    values[:, 0] = 1.0
    return values


def _gather_vertex_values(touched_keys: torch.Tensor, touched_values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Raw vertex values at arbitrary vertex keys: the touched values, or the defaults (sdf 1, rest 0)."""
    rows, found = _lookup(touched_keys, keys)
    values = _default_vertex_values(keys.shape[0], keys.device)
    values[found] = touched_values[rows[found]]
    return values


def _gather_cube_weights(voxel_keys: torch.Tensor, voxel_weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    rows, found = _lookup(voxel_keys, keys)
    weights = torch.zeros((keys.shape[0], voxel_weights.shape[1]), dtype=torch.float32, device=keys.device)
    weights[found] = voxel_weights[rows[found]]
    return weights


def _dilate(keys: torch.Tensor, res: int) -> torch.Tensor:
    """Sorted unique cube keys of ``keys`` dilated by ``{-1, 0, 1}^3`` inside ``[0, res)^3`` (one axis at a time)."""
    for axis in range(3):
        coords = _cube_coords(keys, res)
        shifted = [keys]
        for step in (-1, 1):
            moved = coords.clone()
            moved[:, axis] += step
            inside = (moved[:, axis] >= 0) & (moved[:, axis] < res)
            shifted.append(_cube_keys(moved[inside], res))
        keys = torch.unique(torch.cat(shifted))
    return keys


def _sparse_surface_cubes(
    touched_keys: torch.Tensor, touched_values: torch.Tensor, voxel_keys: torch.Tensor, voxel_weights: torch.Tensor,
    res: int,
) -> _SurfaceCubes:
    """Surface cubes among the cubes that have at least one touched corner (no other cube can cross the surface)."""
    candidates = _dilate(voxel_keys, res)
    origins = _vertex_keys(_cube_coords(candidates, res), res)
    touched_inside = touched_values[:, 0] < 0
    offsets = _vertex_keys(_corner_offsets(candidates.device), res)
    cases = torch.zeros_like(candidates)
    inside_count = torch.zeros_like(candidates)
    for corner in range(8):
        rows, found = _lookup(touched_keys, origins + offsets[corner])
        inside = (found & touched_inside[rows]).long()
        cases += inside << corner
        inside_count += inside
    is_surface = (inside_count > 0) & (inside_count < 8)
    keys = candidates[is_surface]
    corner_keys = origins[is_surface][:, None] + offsets
    table_keys, corners = torch.unique(corner_keys, return_inverse=True)
    sdf, positions, colors = _vertex_table(
        table_keys, _gather_vertex_values(touched_keys, touched_values, table_keys), res
    )
    return _SurfaceCubes(
        keys=keys, cases=cases[is_surface], corners=corners,
        weights=_gather_cube_weights(voxel_keys, voxel_weights, keys),
        sdf=sdf, positions=positions, colors=colors,
    )


def _dense_surface_cubes(
    touched_keys: torch.Tensor, touched_values: torch.Tensor, voxel_keys: torch.Tensor, voxel_weights: torch.Tensor,
    res: int,
) -> _SurfaceCubes:
    """The reference's layout: dense ``(res+1)^3`` vertex and ``res^3`` cube grids, then the surface cubes."""
    device = touched_keys.device
    side = res + 1
    values = _default_vertex_values(side ** 3, device)
    values[touched_keys] = touched_values
    sdf, positions, colors = _vertex_table(torch.arange(side ** 3, device=device), values, res)
    all_cubes = torch.arange(res ** 3, device=device)
    cube_corners = _vertex_keys(_cube_coords(all_cubes, res), res)[:, None] + _vertex_keys(
        _corner_offsets(device), res
    )
    occupied = (sdf < 0)[cube_corners]
    inside_count = occupied.sum(dim=1)
    is_surface = (inside_count > 0) & (inside_count < 8)
    weights = torch.zeros((res ** 3, voxel_weights.shape[1]), dtype=torch.float32, device=device)
    weights[voxel_keys] = voxel_weights
    powers = 2 ** torch.arange(8, device=device)
    return _SurfaceCubes(
        keys=all_cubes[is_surface], cases=(occupied[is_surface].long() * powers).sum(dim=1),
        corners=cube_corners[is_surface], weights=weights[is_surface],
        sdf=sdf, positions=positions, colors=colors,
    )


def _flexicubes(surface: _SurfaceCubes, res: int, dense: bool) -> ExtractedMesh:
    """FlexiCubes on the surface cubes: ambiguity resolution, dual vertices, quads, triangles."""
    beta = torch.tanh(surface.weights[:, 0:12]) * WEIGHT_SCALE + 1
    alpha = torch.tanh(surface.weights[:, 12:20]) * WEIGHT_SCALE + 1
    gamma = torch.sigmoid(surface.weights[:, 20]) * WEIGHT_SCALE + (1 - WEIGHT_SCALE) / 2
    cases = _resolve_ambiguity(surface.cases, surface.keys, res, dense)
    edges = _surface_edges(surface)
    dual = _dual_vertices(surface, cases, edges, beta, alpha, gamma)
    faces = _triangulate(surface.sdf, edges, dual)
    return ExtractedMesh(vertices=dual.positions, faces=faces, vertex_attrs=dual.colors)


def _resolve_ambiguity(cases: torch.Tensor, keys: torch.Tensor, res: int, dense: bool) -> torch.Tensor:
    """Invert each flagged case whose neighbour across its ambiguous face is a flagged surface cube too.

    Flags are read from the original cases, so both cubes of such a pair are inverted. Neighbours are found by
    binary search among the flagged cube keys, or (``dense``) in a ``res^3`` flag grid as the reference does.
    """
    check = _table("check", cases.device)[cases]
    flagged = torch.nonzero(check[:, 0] == 1).squeeze(1)
    flagged_keys = keys[flagged]
    neighbours = _cube_coords(flagged_keys, res) + check[flagged, 1:4]
    inside = ((neighbours >= 0) & (neighbours < res)).all(dim=1)
    neighbour_keys = _cube_keys(neighbours[inside], res)
    if dense:
        flag_grid = torch.zeros(res ** 3, dtype=torch.bool, device=cases.device)
        flag_grid[flagged_keys] = True
        neighbour_flagged = flag_grid[neighbour_keys]
    else:
        neighbour_flagged = _lookup(flagged_keys, neighbour_keys)[1]
    invert = flagged[inside][neighbour_flagged]
    cases = cases.clone()
    cases[invert] = check[invert, 4]
    return cases


def _edge_axis_rank(device: torch.device) -> torch.Tensor:
    """Per edge slot, the rank of its second endpoint among a vertex's three outgoing stored edges.

    For a fixed first endpoint ``v`` the second endpoint is ``v - (res+1)`` (y edge), ``v + 1`` (z edge) or
    ``v + (res+1)^2`` (x edge), so ``first * 3 + rank`` sorts exactly like the pair ``(first, second)``.
    """
    offsets = _corner_offsets(device)
    corners = _edge_corners(device)
    direction = offsets[corners[:, 1]] - offsets[corners[:, 0]]
    return (direction[:, 0] * 2 + direction[:, 2]).clamp(min=0)


def _surface_edges(surface: _SurfaceCubes) -> _Edges:
    """Unique edges of the surface cubes in ``(first, second)`` order; surface edges have one inside endpoint.

    The vertex table rows ascend with the vertex keys, so ordering by rows is ordering by grid vertex ids.
    """
    ends = surface.corners[:, _edge_corners(surface.corners.device)]
    codes = ends[..., 0] * 3 + _edge_axis_rank(ends.device)
    unique_codes, inverse, counts = torch.unique(codes.reshape(-1), return_inverse=True, return_counts=True)
    second = torch.empty_like(unique_codes).scatter_(0, inverse, ends[..., 1].reshape(-1))
    first = unique_codes // 3
    inside = surface.sdf < 0
    is_surface_edge = inside[first] != inside[second]
    numbering = torch.cumsum(is_surface_edge, dim=0) - 1
    numbering[~is_surface_edge] = -1
    return _Edges(
        first=first[is_surface_edge],
        slot_edge=numbering[inverse].reshape(-1, 12),
        slot_count=counts[inverse].reshape(-1, 12),
    )


def _dual_vertex_numbering(num_vd: torch.Tensor) -> torch.Tensor:
    """Index of each cube's first dual vertex: grouped by dual-vertex count (ascending), then by cube order."""
    order = torch.sort(num_vd, stable=True).indices
    first_sorted = torch.cumsum(num_vd[order], dim=0) - num_vd[order]
    return torch.empty_like(first_sorted).scatter_(0, order, first_sorted)


def _crossing(s0: torch.Tensor, s1: torch.Tensor, a0: torch.Tensor, a1: torch.Tensor,
              x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Zero crossing of the alpha-weighted scalar field: ``(x0 w1 - x1 w0) / (w1 - w0)`` with ``w = s * alpha``."""
    w0 = (s0 * a0)[:, None]
    w1 = (s1 * a1)[:, None]
    return (x0 * w1 - x1 * w0) / (w1 - w0)


def _dual_vertices(
    surface: _SurfaceCubes, cases: torch.Tensor, edges: _Edges,
    beta: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor,
) -> _DualVertices:
    """Each dual vertex is the beta-weighted mean of its edge group's crossings (positions and colours alike).

    Members are visited cube by cube, dual vertex by dual vertex, edge by edge, so each dual vertex accumulates
    its edges in table order, as in the reference. Every dual vertex has at least one edge.
    """
    device = cases.device
    num_vd = _table("num_vd", device)[cases]
    groups = _table("dmc", device)[cases]
    first_vd = _dual_vertex_numbering(num_vd)
    is_member = groups >= 0
    cube, group, _ = torch.nonzero(is_member, as_tuple=True)
    slot = groups[is_member]
    vertex = first_vd[cube] + group
    total = int(num_vd.sum())

    pair = _edge_corners(device)[slot]
    ends = surface.corners[cube[:, None], pair]
    s0, s1 = surface.sdf[ends[:, 0]], surface.sdf[ends[:, 1]]
    a0, a1 = alpha[cube, pair[:, 0]], alpha[cube, pair[:, 1]]
    weight = beta[cube, slot][:, None]

    weight_sum = torch.zeros((total, 1), dtype=torch.float32, device=device).index_add_(0, vertex, weight)

    def weighted_mean(attribute: torch.Tensor) -> torch.Tensor:
        crossing = _crossing(s0, s1, a0, a1, attribute[ends[:, 0]], attribute[ends[:, 1]])
        summed = torch.zeros((total, attribute.shape[1]), dtype=torch.float32, device=device)
        return summed.index_add_(0, vertex, crossing * weight) / weight_sum

    slot_vertex = torch.zeros((cases.shape[0], 12), dtype=torch.int64, device=device)
    slot_vertex[cube, slot] = vertex
    vertex_gamma = torch.empty(total, dtype=torch.float32, device=device)
    vertex_gamma[vertex] = gamma[cube]
    return _DualVertices(
        positions=weighted_mean(surface.positions), colors=weighted_mean(surface.colors),
        gamma=vertex_gamma, slot_vertex=slot_vertex,
    )


def _triangulate(sdf: torch.Tensor, edges: _Edges, dual: _DualVertices) -> torch.Tensor:
    """One quad per surface edge shared by 4 surface cubes, wound towards positive sdf, split by gamma.

    The 4 cubes around an edge, in cube order, form the cycle 0-1-3-2 about the edge. Like the reference, the
    winding is chosen by ``sdf(first endpoint) > 0`` while occupancy is ``sdf < 0``: where the outside endpoint
    has sdf exactly 0, the quad is wound the other way (reproduced, not corrected).
    """
    device = sdf.device
    shared = (edges.slot_edge >= 0) & (edges.slot_count == 4)
    edge_of_entry = edges.slot_edge[shared]
    edge_sorted, order = torch.sort(edge_of_entry, stable=True)
    quads = dual.slot_vertex[shared][order].reshape(-1, 4)
    flip = sdf[edges.first[edge_sorted[::4]]] > 0
    quads = torch.cat([
        quads[flip][:, torch.tensor(_QUAD_FLIPPED, device=device)],
        quads[~flip][:, torch.tensor(_QUAD_KEPT, device=device)],
    ])
    quad_gamma = dual.gamma[quads]
    split_02 = quad_gamma[:, 0] * quad_gamma[:, 2] > quad_gamma[:, 1] * quad_gamma[:, 3]
    faces = torch.where(
        split_02[:, None],
        quads[:, torch.tensor(_SPLIT_02, device=device)],
        quads[:, torch.tensor(_SPLIT_13, device=device)],
    )
    return faces.reshape(-1, 3)
