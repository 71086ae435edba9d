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
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

log = logging.getLogger(__name__)

# fast-simplification keeps the mesh being simplified (and replayed) in C++ module globals: one call at a time
# per process. The engine runs clean-ups in a process pool (engine/cleanup.py), which is what parallelises them.
_SIMPLIFY_LOCK = threading.Lock()


def _proper_faces(faces: np.ndarray) -> np.ndarray:
    """Mask of the faces whose three corners are distinct vertices."""
    return (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class ColoredMesh:
    """A triangle mesh with one RGB colour per vertex (values in [0, 1], as the decoder gives them) and, once
    baked (geometry/texture), a UV per vertex and a base-colour texture (sRGB-encoded like the colours)."""

    vertices: np.ndarray  # float32 [V, 3]
    faces: np.ndarray  # int64 [F, 3]
    colors: np.ndarray  # float32 [V, 3]
    uvs: np.ndarray | None = None  # float32 [V, 2] in [0, 1], v down (glTF's TEXCOORD_0)
    texture: np.ndarray | None = None  # uint8 [H, W, 3], row 0 at v = 0

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
        if (self.uvs is None) != (self.texture is None):
            raise ValueError("uvs and texture come together: give both or neither")
        if self.uvs is not None:
            uvs = np.ascontiguousarray(np.asarray(self.uvs, dtype=np.float32))
            texture = np.ascontiguousarray(np.asarray(self.texture, dtype=np.uint8))
            if uvs.shape != (len(vertices), 2):
                raise ValueError(f"uvs must be [V, 2] for {len(vertices)} vertices, got {uvs.shape}")
            if texture.ndim != 3 or texture.shape[2] != 3 or 0 in texture.shape:
                raise ValueError(f"texture must be a non-empty [H, W, 3] image, got {texture.shape}")
            object.__setattr__(self, "uvs", uvs)
            object.__setattr__(self, "texture", texture)
        object.__setattr__(self, "vertices", vertices)
        object.__setattr__(self, "faces", faces)
        object.__setattr__(self, "colors", colors)

    @property
    def vertex_count(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def face_count(self) -> int:
        return int(self.faces.shape[0])

    @property
    def textured(self) -> bool:
        return self.texture is not None

    def select_faces(self, keep: np.ndarray) -> ColoredMesh:
        """The sub-mesh made of the faces where ``keep`` is true, without unreferenced vertices."""
        return ColoredMesh(self.vertices, self.faces[keep], self.colors, self.uvs, self.texture).compact()

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
        uvs = None if self.uvs is None else self.uvs[used]
        return ColoredMesh(self.vertices[used], new_index[self.faces], self.colors[used], uvs, self.texture)


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
    vertex index in the component, so isolated vertices are their own component."""
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    rows = np.concatenate([faces[:, 0], faces[:, 1]])  # edges 0-1 and 1-2 connect all three corners
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(vertex_count, vertex_count))
    count, labels = connected_components(graph, directed=False)
    smallest = np.full(count, vertex_count, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(vertex_count, dtype=np.int64))
    return smallest[labels]


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


def _merged_means(values: np.ndarray, mapping: np.ndarray, count: int) -> np.ndarray:
    """``[count, C]`` mean of ``values [V, C]`` over the original vertices ``mapping`` sends to each output vertex."""
    weights = values.astype(np.float64)
    sizes = np.bincount(mapping, minlength=count)
    sums = np.stack([np.bincount(mapping, weights[:, c], minlength=count) for c in range(values.shape[1])], 1)
    return (sums / np.maximum(sizes, 1)[:, None]).astype(np.float32)


def decimate(mesh: ColoredMesh, target_faces: int, aggressiveness: float = 7.0) -> ColoredMesh:
    """Quadric edge-collapse decimation to about ``target_faces`` triangles (fast-simplification).

    Colours follow the collapses: replaying the simplifier's collapse record, the library maps every original
    vertex to the output vertex it was merged into (vertices left without a face go to a neighbour they shared
    an edge with), so each surviving vertex gets the mean colour of all original vertices merged into it (a box
    filter over the patch of surface it now represents); positions are the simplifier's quadric-optimal ones.
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
        replayed_points, replayed_faces, mapping = fast_simplification.replay_simplification(
            mesh.vertices, mesh.faces.astype(np.int32), np.asarray(collapses, dtype=np.int32))
    mapping = np.asarray(mapping, dtype=np.int64)
    colors = _merged_means(mesh.colors, mapping, len(replayed_points))
    faces = np.asarray(faces, dtype=np.int64)
    if len(replayed_points) == len(points) and np.array_equal(replayed_faces, faces):
        return ColoredMesh(points.astype(np.float32), faces, colors)
    log.warning("fast-simplification's output does not match the replay of its collapse record; "
                "keeping the replayed mesh")
    return ColoredMesh(replayed_points, replayed_faces, colors)


def simplify(mesh: ColoredMesh, target_faces: int | None) -> ColoredMesh:
    """Decimate to ``target_faces`` (skipped when None), drop duplicated faces."""
    if target_faces is not None:
        mesh = decimate(mesh, target_faces)
    return mesh.without_duplicate_faces()


def postprocess(mesh: ColoredMesh, *, min_fraction: float = 0.02, target_faces: int | None = None) -> ColoredMesh:
    """Remove floaters, decimate to ``target_faces`` (skipped when None), drop duplicated faces."""
    return simplify(remove_floaters(mesh, min_fraction), target_faces)
