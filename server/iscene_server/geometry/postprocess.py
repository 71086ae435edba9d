"""Per-instance mesh clean-up before export: drop floaters, decimate, measure bounds.

Meshes live in the scene frame S (z up). Every function here is deterministic: the same input arrays
give the same output arrays, byte for byte.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import fast_simplification
import numpy as np
import torch

log = logging.getLogger(__name__)

# fast-simplification keeps the mesh being simplified in C++ module globals: one call at a time.
_SIMPLIFY_LOCK = threading.Lock()


def _proper_faces(faces: np.ndarray) -> np.ndarray:
    """Mask of the faces whose three corners are distinct vertices."""
    return (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class ColoredMesh:
    """A triangle mesh with one RGB colour per vertex (values in [0, 1], as the decoder gives them)."""

    vertices: np.ndarray  # float32 [V, 3]
    faces: np.ndarray  # int64 [F, 3]
    colors: np.ndarray  # float32 [V, 3]

    def __post_init__(self) -> None:
        vertices = np.ascontiguousarray(np.asarray(self.vertices, dtype=np.float32))
        faces = np.ascontiguousarray(np.asarray(self.faces, dtype=np.int64))
        colors = np.ascontiguousarray(np.asarray(self.colors, dtype=np.float32))
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise ValueError(f"vertices must be [V, 3], got {vertices.shape}")
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must be [F, 3], got {faces.shape}")
        if colors.shape != vertices.shape:
            raise ValueError(f"colors must be [V, 3] like vertices {vertices.shape}, got {colors.shape}")
        if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise ValueError("faces reference vertices that do not exist")
        object.__setattr__(self, "vertices", vertices)
        object.__setattr__(self, "faces", faces)
        object.__setattr__(self, "colors", colors)

    @property
    def vertex_count(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def face_count(self) -> int:
        return int(self.faces.shape[0])

    def select_faces(self, keep: np.ndarray) -> ColoredMesh:
        """The sub-mesh made of the faces where ``keep`` is true, without unreferenced vertices."""
        return ColoredMesh(self.vertices, self.faces[keep], self.colors).compact()

    def without_degenerate_faces(self) -> ColoredMesh:
        """Drop faces that use one vertex twice (they have no area and confuse edge collapses)."""
        proper = _proper_faces(self.faces)
        return self if proper.all() else self.select_faces(proper)

    def without_duplicate_faces(self) -> ColoredMesh:
        """Keep one face per set of three vertices (decimating many tiny parts can fold a part flat into
        coincident triangles, which importers such as Blender's merge anyway)."""
        _, first = np.unique(np.sort(self.faces, axis=1), axis=0, return_index=True)
        if len(first) == self.face_count:
            return self
        keep = np.zeros(self.face_count, dtype=bool)
        keep[first] = True
        return self.select_faces(keep)

    def compact(self) -> ColoredMesh:
        """Drop vertices no face references; the remaining vertices keep their order (and colours)."""
        used = np.zeros(self.vertex_count, dtype=bool)
        used[self.faces.reshape(-1)] = True
        if used.all():
            return self
        new_index = np.cumsum(used, dtype=np.int64) - 1
        return ColoredMesh(self.vertices[used], new_index[self.faces], self.colors[used])


@dataclass(frozen=True)
class Bounds:
    """Axis-aligned bounds in S and the object origin: the bottom centre of the box (z is up)."""

    min: tuple[float, float, float]
    max: tuple[float, float, float]
    origin: tuple[float, float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"min": list(self.min), "max": list(self.max), "origin": list(self.origin)}


def bounds_and_origin(vertices: np.ndarray) -> Bounds:
    """Bounding box of ``vertices [V, 3]`` and its bottom centre (centre in x and y, minimum z)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise ValueError(f"need a non-empty [V, 3] vertex array, got {vertices.shape}")
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    centre = (low + high) / 2
    origin = (float(centre[0]), float(centre[1]), float(low[2]))
    return Bounds(tuple(map(float, low)), tuple(map(float, high)), origin)


def vertex_components(faces: np.ndarray, vertex_count: int) -> np.ndarray:
    """Connected-component id per vertex (vertices joined by shared faces); the id is the smallest
    vertex index in the component, so isolated vertices are their own component.

    Parallel union-find: every round hooks each root onto the smallest root it shares an edge with,
    then compresses paths fully; the number of rounds grows like log(V), not with the mesh diameter.
    """
    parent = torch.arange(vertex_count, dtype=torch.int64)
    if len(faces) == 0:
        return parent.numpy()
    tri = torch.from_numpy(np.asarray(faces, dtype=np.int64))
    a = torch.cat([tri[:, 0], tri[:, 1]])
    b = torch.cat([tri[:, 1], tri[:, 2]])
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not bool(differ.any()):
            return parent.numpy()
        low, high = torch.minimum(ra, rb)[differ], torch.maximum(ra, rb)[differ]
        parent.scatter_reduce_(0, high, low, reduce="amin")
        while True:
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                break
            parent = jumped
        a, b = a[differ], b[differ]


def remove_floaters(mesh: ColoredMesh, min_fraction: float = 0.02) -> ColoredMesh:
    """Drop connected components with fewer faces than ``min_fraction`` × the largest component's.

    The largest component always stays; unreferenced vertices are dropped with their colours.
    """
    if mesh.face_count == 0:
        return mesh.compact()
    component = vertex_components(mesh.faces, mesh.vertex_count)
    face_component = component[mesh.faces[:, 0]]
    sizes = np.bincount(face_component, minlength=mesh.vertex_count)
    largest = sizes.max()
    keep_component = (sizes >= min_fraction * largest) | (sizes == largest)
    return mesh.select_faces(keep_component[face_component])


def _collapse_roots(collapses: np.ndarray, vertex_count: int) -> np.ndarray:
    """For each original vertex, the vertex it was finally merged into (itself if it survived).

    ``collapses[i] = (keep, gone)``: in the i-th edge collapse ``gone`` merged into ``keep``. A vertex
    merges away once, so the pairs form a forest; following parents to the root resolves chains.
    """
    parent = np.arange(vertex_count, dtype=np.int64)
    if len(collapses):
        parent[collapses[:, 1]] = collapses[:, 0]
    while True:
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            return parent
        parent = jumped


def _replay_topology(faces: np.ndarray, roots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply the collapses to the faces: (original index of each kept vertex, faces on kept vertices).

    The simplifier deletes exactly the faces that become degenerate, keeps face and corner order,
    and numbers the surviving vertices in original order, so this reproduces its output topology.
    """
    merged = roots[faces]
    merged = merged[_proper_faces(merged)]
    kept = np.unique(merged)
    return kept, np.searchsorted(kept, merged)


def _cluster_mean(values: np.ndarray, roots: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over every original vertex merged into each kept vertex."""
    slot = np.searchsorted(kept, roots)
    valid = (slot < len(kept)) & (kept[np.minimum(slot, len(kept) - 1)] == roots)
    slot, weights = slot[valid], values[valid].astype(np.float64)
    counts = np.bincount(slot, minlength=len(kept))
    sums = np.stack([np.bincount(slot, weights[:, c], minlength=len(kept)) for c in range(values.shape[1])], 1)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def decimate(mesh: ColoredMesh, target_faces: int, aggressiveness: float = 7.0) -> ColoredMesh:
    """Quadric edge-collapse decimation to about ``target_faces`` triangles (fast-simplification).

    Colours follow the collapses: the simplifier reports which vertex merged into which, so each
    surviving vertex gets the mean colour of all original vertices merged into it (a box filter over
    the patch of surface it now represents); positions are the simplifier's quadric-optimal ones.
    Faces that use a vertex twice are dropped first. Otherwise a no-op when the mesh already has at
    most ``target_faces`` faces.
    """
    if target_faces < 1:
        raise ValueError(f"target_faces must be positive, got {target_faces}")
    mesh = mesh.without_degenerate_faces().compact()
    if mesh.face_count <= target_faces:
        return mesh
    with _SIMPLIFY_LOCK:
        points, faces, collapses = fast_simplification.simplify(
            mesh.vertices.astype(np.float64), mesh.faces, target_count=target_faces,
            agg=aggressiveness, return_collapses=True,
        )
    roots = _collapse_roots(np.asarray(collapses, dtype=np.int64).reshape(-1, 2), mesh.vertex_count)
    kept, replayed = _replay_topology(mesh.faces, roots)
    colors = _cluster_mean(mesh.colors, roots, kept)
    if len(kept) == len(points) and np.array_equal(replayed, faces):
        return ColoredMesh(points.astype(np.float32), replayed, colors)
    log.warning("fast-simplification output does not match its collapse record; "
                "keeping the surviving vertices at their original positions")
    return ColoredMesh(mesh.vertices[kept], replayed, colors)


def postprocess(mesh: ColoredMesh, *, min_fraction: float = 0.02, target_faces: int | None = None) -> ColoredMesh:
    """Remove floaters, decimate to ``target_faces`` (skipped when None), drop duplicated faces."""
    mesh = remove_floaters(mesh, min_fraction)
    if target_faces is not None:
        mesh = decimate(mesh, target_faces)
    return mesh.without_duplicate_faces()
