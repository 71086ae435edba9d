"""Reading any writer's GLB as one triangle mesh: every triangle primitive of every mesh node of the default scene.

The file is untrusted (an artist's export, sent over HTTP), so everything is checked before it is used: counts
against the limit and against the buffer length before anything is decoded, byte ranges against the buffer,
indices against the vertex count, positions for finiteness. Problems raise :class:`GltfError`, whose text says
what is wrong with the file (callers add which object it was and how to fix it).

Frames: the node hierarchy is applied in glTF's own y-up frame, then y-up is undone, (x, y, z)_glTF ↦ (x, −z, y)
(the inverse of :data:`.gltf.S_TO_GLTF`), so a file written by :mod:`.glb_writer` reads back in S.

Colours (sRGB in [0, 1] per vertex): ``COLOR_0`` (linear, float or normalised u8/u16, VEC3 or VEC4 with alpha
dropped) times the material's ``baseColorFactor``; without ``COLOR_0`` the factor alone; without a material
:data:`NEUTRAL_GREY`. Textures are not read.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .colour import linear_to_srgb
from .glb_reader import read_glb
from .gltf import FLOAT, GLB_HEADER, GLB_MAGIC, S_TO_GLTF, TRIANGLES, UINT32

NEUTRAL_GREY = 0.5  # sRGB grey of a primitive with neither vertex colours nor a material colour
MAX_NODE_DEPTH = 64  # deepest node hierarchy read
UNSIGNED_BYTE, UNSIGNED_SHORT = 5121, 5123  # accessor component types (with gltf.FLOAT and gltf.UINT32)
COMPONENT_DTYPES = {UNSIGNED_BYTE: "<u1", UNSIGNED_SHORT: "<u2", UINT32: "<u4", FLOAT: "<f4"}  # those read
TYPE_WIDTHS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}  # those read
INDEX_TYPES = (UNSIGNED_BYTE, UNSIGNED_SHORT, UINT32)
COMPRESSION_EXTENSIONS = {
    "KHR_draco_mesh_compression": "Draco",
    "EXT_meshopt_compression": "meshopt",
    "KHR_meshopt_compression": "meshopt",
    "KHR_mesh_quantization": "mesh quantization",
}
APPEARANCE_EXTENSION_PREFIXES = ("KHR_materials_", "KHR_texture_", "EXT_texture_", "KHR_lights_")
"""Required extensions that only change how a file looks (materials, textures, lights): safe to ignore here."""


class GltfError(ValueError):
    """A GLB that cannot be used; ``str()`` is the user-facing problem."""


@dataclass
class SceneMesh:
    vertices: np.ndarray  # float32 [V, 3], the file's frame with glTF's y-up undone: (x, y, z)_glTF -> (x, -z, y)
    faces: np.ndarray  # int32 [F, 3]
    colors: np.ndarray  # float32 [V, 3] sRGB in [0, 1]

    @property
    def face_count(self) -> int:
        return len(self.faces)


@dataclass
class Primitive:
    """One triangle primitive decoded in its mesh's local frame (glTF y-up), only the vertices it uses."""

    vertices: np.ndarray  # float64 [V, 3]
    faces: np.ndarray  # int64 [F, 3]
    colors: np.ndarray  # float32 [V, 3] sRGB


def read_scene_mesh(data: bytes, max_faces: int) -> SceneMesh:
    """Every triangle of the GLB's default scene as one mesh (see the module doc); refuses files over
    ``max_faces`` triangles before decoding any of them."""
    gltf, binary = read_container(data)
    try:
        check_document(gltf)
        return GltfScene(gltf, binary).mesh(max_faces)
    except KeyError as exc:
        raise GltfError(f"its glTF JSON is malformed: the required property {exc} is missing") from exc
    except GltfError:
        raise
    except (IndexError, TypeError, AttributeError, ValueError, OverflowError) as exc:
        raise GltfError(f"its glTF JSON is malformed: {exc}") from exc


def read_container(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON document and BIN chunk, with container problems as :class:`GltfError`."""
    if len(data) < 20:
        raise GltfError("not a glTF 2.0 binary (GLB) file: it is shorter than a GLB header")
    magic, _, total = struct.unpack_from(GLB_HEADER, data, 0)
    if magic == GLB_MAGIC and total > len(data):
        raise GltfError(f"the GLB file is truncated: its header says {total} bytes, it has {len(data)}")
    try:
        gltf, binary = read_glb(bytes(data))
    except struct.error as exc:
        raise GltfError("the GLB file is truncated (a chunk header lies past its end)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise GltfError("the GLB's JSON chunk is not valid JSON") from exc
    except ValueError as exc:
        raise GltfError(str(exc)) from exc
    if not isinstance(gltf, dict):
        raise GltfError("the GLB's JSON chunk is not a glTF document")
    return gltf, binary


def check_document(gltf: dict[str, Any]) -> None:
    """Refuse what this reader cannot read faithfully: other glTF versions, compression, external buffers."""
    version = str((gltf.get("asset") or {}).get("version", ""))
    if not version.startswith("2."):
        raise GltfError(f"it is glTF version {version or 'unknown'}, not glTF 2.0")
    for name in gltf.get("extensionsRequired") or []:
        if name in COMPRESSION_EXTENSIONS:
            raise GltfError(f"it uses {COMPRESSION_EXTENSIONS[name]} compression ({name}); "
                            "export it without Draco/meshopt compression or quantization")
        if not str(name).startswith(APPEARANCE_EXTENSION_PREFIXES):
            raise GltfError(f"it requires the glTF extension {name}, which this reader does not support")
    for index, buffer in enumerate(gltf.get("buffers") or []):
        if "uri" in buffer:
            raise GltfError("its geometry lives in an external or embedded-URI buffer; "
                            "export it as a single .glb (glTF binary) file")
        if index > 0:
            raise GltfError("it has more than one binary buffer; export it as a single .glb file")


def numbers(value: Any, length: int, what: str) -> np.ndarray:
    """``value`` as ``length`` finite float64 numbers, or :class:`GltfError` naming ``what``."""
    problem = GltfError(f"{what} is malformed (it must be {length} finite numbers)")
    if not (isinstance(value, list) and len(value) == length
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)):
        raise problem
    try:
        array = np.array(value, dtype=np.float64)
    except OverflowError as exc:  # an integer beyond float range
        raise problem from exc
    if not np.isfinite(array).all():
        raise problem
    return array


def node_matrix(node: dict[str, Any]) -> np.ndarray:
    """A node's local 4x4 (column vectors): its ``matrix`` (stored column-major) or T·R·S."""
    if "matrix" in node:
        m = numbers(node["matrix"], 16, "a node matrix").reshape(4, 4).T
    else:
        t = numbers(node.get("translation", [0.0, 0.0, 0.0]), 3, "a node translation")
        x, y, z, w = numbers(node.get("rotation", [0.0, 0.0, 0.0, 1.0]), 4, "a node rotation")
        s = numbers(node.get("scale", [1.0, 1.0, 1.0]), 3, "a node scale")
        norm = math.sqrt(x * x + y * y + z * z + w * w)
        if not 0 < norm < math.inf:
            raise GltfError("a node rotation is malformed (not a quaternion)")
        x, y, z, w = x / norm, y / norm, z / norm, w / norm
        rotation = np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ])
        m = np.eye(4)
        m[:3, :3] = rotation * s[None, :]
        m[:3, 3] = t
    if not np.isfinite(m).all():
        raise GltfError("a node transform is not finite")
    return m


class GltfScene:
    """One parsed document and its binary chunk; accessors are bounds-checked, primitives decoded once."""

    def __init__(self, gltf: dict[str, Any], binary: bytes) -> None:
        self.gltf = gltf
        self.binary = binary
        self._primitives: dict[tuple[int, int], Primitive | None] = {}

    def item(self, key: str, index: Any) -> dict[str, Any]:
        """``gltf[key][index]``, refusing indices that are not valid for that list."""
        items = self.gltf.get(key) or []
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(items):
            raise GltfError(f"it refers to {key} {index!r}, which does not exist")
        return items[index]

    def root_nodes(self) -> list[int]:
        """The nodes of the default scene (``scene``, else scene 0, else every node that is nobody's child)."""
        scenes = self.gltf.get("scenes") or []
        if scenes:
            return list(self.item("scenes", self.gltf.get("scene", 0)).get("nodes") or [])
        children = {c for node in self.gltf.get("nodes") or [] for c in node.get("children") or []}
        return [i for i in range(len(self.gltf.get("nodes") or [])) if i not in children]

    def mesh_instances(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(mesh index, world matrix)`` of every mesh node under the default scene, depth first."""
        visited: set[int] = set()
        stack = [(index, np.eye(4), 1) for index in reversed(self.root_nodes())]
        while stack:
            index, parent, depth = stack.pop()
            node = self.item("nodes", index)
            if index in visited:
                raise GltfError("its node hierarchy is not a tree (a node is reached twice)")
            if depth > MAX_NODE_DEPTH:
                raise GltfError(f"its node hierarchy is deeper than {MAX_NODE_DEPTH} levels")
            visited.add(index)
            with np.errstate(over="ignore", invalid="ignore"):
                world = parent @ node_matrix(node)
            if not np.isfinite(world).all():
                raise GltfError("its node transforms are not finite")
            if "mesh" in node:
                yield node["mesh"], world
            stack.extend((child, world, depth + 1) for child in reversed(node.get("children") or []))

    def triangle_primitives(self, mesh_index: int) -> Iterator[tuple[int, dict[str, Any]]]:
        for p, primitive in enumerate(self.item("meshes", mesh_index).get("primitives") or []):
            if primitive.get("mode", TRIANGLES) == TRIANGLES:
                yield p, primitive

    def triangle_count(self, primitive: dict[str, Any]) -> int:
        """Triangles of a primitive from its accessor counts alone (nothing decoded)."""
        if "indices" in primitive:
            count = self.accessor_count(primitive["indices"])
        else:
            count = self.accessor_count(primitive["attributes"]["POSITION"])
        if count % 3:
            raise GltfError(f"a triangle primitive has {count} corners, not a multiple of 3")
        return count // 3

    def accessor_count(self, index: Any) -> int:
        count = self.item("accessors", index).get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise GltfError(f"accessor {index} has an invalid count")
        return count

    def accessor(self, index: Any, components: tuple[int, ...], types: tuple[str, ...],
                 wrong: str) -> np.ndarray:
        """Accessor ``index`` as ``[count, width]`` of its component dtype, after checking it has one of the
        ``components`` / ``types`` (else GltfError ``wrong``) and that its bytes lie in the buffer (so a hostile
        count cannot make us allocate more than the file holds)."""
        accessor = self.item("accessors", index)
        if accessor.get("componentType") not in components or accessor.get("type") not in types:
            raise GltfError(wrong)
        if "sparse" in accessor:
            raise GltfError("it uses sparse accessors; export it without sparse accessors")
        if "bufferView" not in accessor:
            raise GltfError(f"accessor {index} has no data (no bufferView)")
        dtype, width = COMPONENT_DTYPES[accessor["componentType"]], TYPE_WIDTHS[accessor["type"]]
        count = self.accessor_count(index)
        view = self.item("bufferViews", accessor["bufferView"])
        if view.get("buffer", 0) != 0:
            raise GltfError(f"accessor {index} refers to a buffer other than the GLB's binary chunk")
        itemsize = np.dtype(dtype).itemsize
        element = itemsize * width
        stride = view.get("byteStride") or element
        view_start, view_length = view.get("byteOffset", 0), view.get("byteLength", 0)
        start = accessor.get("byteOffset", 0)
        sizes = (stride, view_start, view_length, start)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes) or stride < element:
            raise GltfError(f"accessor {index} has an invalid byte offset, length or stride")
        needed = start + (stride * (count - 1) + element if count else 0)
        if view_start + view_length > len(self.binary) or needed > view_length:
            raise GltfError("the GLB file is truncated: an accessor lies past the end of its buffer")
        if count == 0:
            return np.zeros((0, width), dtype=dtype)
        array = np.ndarray((count, width), dtype=dtype, buffer=self.binary, offset=view_start + start,
                           strides=(stride, itemsize))
        return np.array(array)

    def positions(self, index: Any) -> np.ndarray:
        values = self.accessor(index, (FLOAT,), ("VEC3",),
                                  "its vertex positions are not float32 VEC3; export it without quantization")
        return values.astype(np.float64)  # [V, 3]

    def indices(self, primitive: dict[str, Any], vertex_count: int) -> np.ndarray:
        """Triangle corners ``[F, 3]`` (int64), sequential when the primitive has no indices."""
        if "indices" not in primitive:
            return np.arange(vertex_count - vertex_count % 3, dtype=np.int64).reshape(-1, 3)
        values = self.accessor(primitive["indices"], INDEX_TYPES, ("SCALAR",),
                                  "its triangle indices are not unsigned 8, 16 or 32-bit scalars")
        corners = values.reshape(-1).astype(np.int64)
        if len(corners) and corners.max() >= vertex_count:
            raise GltfError(f"a triangle index ({corners.max()}) is out of range for {vertex_count} vertices")
        return corners.reshape(-1, 3)

    def vertex_colours(self, index: Any) -> np.ndarray:
        """``COLOR_0`` as linear RGB ``[V, 3]`` in [0, 1] (float, or normalised unsigned bytes/shorts)."""
        values = self.accessor(index, (FLOAT, UNSIGNED_BYTE, UNSIGNED_SHORT), ("VEC3", "VEC4"),
                                  "its vertex colours (COLOR_0) are not float or normalised unsigned VEC3/VEC4")
        colours = values[:, :3].astype(np.float64)
        if values.dtype.kind != "f":
            colours /= np.iinfo(values.dtype).max
        return colours

    def base_colour(self, primitive: dict[str, Any]) -> np.ndarray | None:
        """The primitive material's linear ``baseColorFactor`` RGB, or None without a material."""
        if "material" not in primitive:
            return None
        pbr = self.item("materials", primitive["material"]).get("pbrMetallicRoughness") or {}
        return numbers(pbr.get("baseColorFactor", [1.0, 1.0, 1.0, 1.0]), 4, "a material's baseColorFactor")[:3]

    def primitive(self, mesh_index: int, p: int, primitive: dict[str, Any]) -> Primitive | None:
        """Primitive ``p`` of a mesh, decoded once however many nodes use it; None when it has no triangles."""
        key = (mesh_index, p)
        if key not in self._primitives:
            self._primitives[key] = self.decode(primitive)
        return self._primitives[key]

    def decode(self, primitive: dict[str, Any]) -> Primitive | None:
        attributes = primitive["attributes"]
        positions = self.positions(attributes["POSITION"])
        faces = self.indices(primitive, len(positions))
        if len(faces) == 0:
            return None
        used, faces = np.unique(faces, return_inverse=True)  # keep only the vertices the triangles use
        vertices = positions[used]
        if not np.isfinite(vertices).all():
            raise GltfError("some vertex positions are not finite numbers")
        factor = self.base_colour(primitive)
        if "COLOR_0" in attributes:
            linear = self.vertex_colours(attributes["COLOR_0"])
            if len(linear) != len(positions):
                raise GltfError("its vertex colours (COLOR_0) do not have one colour per vertex")
            linear = linear[used] * (1.0 if factor is None else factor)
            colours = linear_to_srgb(linear)
        elif factor is not None:
            colours = np.broadcast_to(linear_to_srgb(factor), vertices.shape)
        else:
            colours = np.full(vertices.shape, NEUTRAL_GREY)
        return Primitive(vertices, faces.reshape(-1, 3), colours.astype(np.float32))

    def mesh(self, max_faces: int) -> SceneMesh:
        instances = [(mesh, list(self.triangle_primitives(mesh)), world) for mesh, world in self.mesh_instances()]
        total = sum(self.triangle_count(primitive) for _, primitives, _ in instances for _, primitive in primitives)
        if total > max_faces:
            raise GltfError(f"it has {total} triangles, over the limit of {max_faces}")
        vertices, faces, colours = [], [], []
        offset = 0
        for mesh, primitives, world in instances:
            for p, primitive in primitives:
                decoded = self.primitive(mesh, p, primitive)
                if decoded is None:
                    continue
                with np.errstate(over="ignore", invalid="ignore"):
                    placed = decoded.vertices @ world[:3, :3].T + world[:3, 3]  # [V, 3] glTF frame
                    placed = (placed @ S_TO_GLTF).astype(np.float32)  # (x, y, z)_glTF -> (x, -z, y)
                if not np.isfinite(placed).all():
                    raise GltfError("its node transforms move vertices to non-finite positions")
                vertices.append(placed)
                faces.append(decoded.faces + offset)
                colours.append(decoded.colors)
                offset += len(decoded.vertices)
        if not faces:
            raise GltfError("it has no triangles (only points, lines, or no meshes in its scene)")
        return SceneMesh(np.concatenate(vertices), np.concatenate(faces).astype(np.int32),
                         np.concatenate(colours).astype(np.float32))
