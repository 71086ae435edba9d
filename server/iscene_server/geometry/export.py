"""File export: binary glTF (GLB) meshes with vertex colours, and 3D Gaussians as 3DGS PLY.

Frames (see DESIGN.md §5 and trellis-spec §7):

* GLB: glTF is y-up, so scene-frame points map as (x, y, z)_S ↦ (x, z, −y); Blender's importer maps
  them back to z-up, so an imported object's vertices equal the S coordinates.
* PLY: TRELLIS ``save_ply`` convention, p ↦ T·p with T = [[1,0,0],[0,0,−1],[0,1,0]], i.e.
  (x, y, z)_S ↦ (x, −z, y) — a different frame from the GLB (z-up S becomes −y, as 3DGS viewers
  expect), and the Gaussians' rotations are turned by the same T.

The GLB is written by the small writer below rather than trimesh: we need node extras, an untextured
vertex-colour material and byte-identical output for identical input, all of which are a few lines
of the glTF 2.0 container format. Output bytes depend only on the arguments.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .postprocess import ColoredMesh

GENERATOR = "iscene-server"

# glTF 2.0 enums
_FLOAT, _UINT32 = 5126, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_TRIANGLES = 4
_GLB_MAGIC, _GLB_VERSION = 0x46546C67, 2
_CHUNK_JSON, _CHUNK_BIN = 0x4E4F534A, 0x004E4942

# (x, y, z)_S -> (x, z, -y): the y-up glTF frame.
S_TO_GLTF = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float64)
# TRELLIS save_ply default transform: (x, y, z)_S -> (x, -z, y).
S_TO_PLY = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64)


def instance_name(label: int) -> str:
    """Node / object / file stem of one instance."""
    return f"instance_{int(label)}"


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class ExportInstance:
    """One instance's mesh and the metadata that travels with it into the glTF ``extras``."""

    mesh: ColoredMesh
    label: int
    seed: int
    model_ids: Mapping[str, str]
    extras: Mapping[str, Any] = field(default_factory=dict)

    def node_extras(self) -> dict[str, Any]:
        base = {"label": int(self.label), "seed": int(self.seed),
                "models": {str(k): str(v) for k, v in self.model_ids.items()}}
        clash = set(base) & set(self.extras)
        if clash:
            raise ValueError(f"extras may not override {sorted(clash)}")
        return {**base, **self.extras}


def srgb_to_linear(colors: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding; glTF vertex colours are linear, the decoder's colours are sRGB-encoded."""
    c = np.clip(np.asarray(colors, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals; vertices without area get +z (up in S)."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    corner = np.asarray(faces).reshape(-1)
    normals = np.stack(
        [np.bincount(corner, np.repeat(face_n[:, k], 3), minlength=len(v)) for k in range(3)], axis=1)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    up = np.broadcast_to(np.array([0.0, 0.0, 1.0]), normals.shape)
    return np.where(length > 1e-20, normals / np.maximum(length, 1e-20), up)


class _GlbBuilder:
    """Accumulates glTF JSON and one binary buffer; ``to_bytes`` gives the GLB container."""

    def __init__(self) -> None:
        self.gltf: dict[str, Any] = {
            "asset": {"version": "2.0", "generator": GENERATOR},
            "scene": 0, "scenes": [{"nodes": []}], "nodes": [], "meshes": [], "materials": [],
            "accessors": [], "bufferViews": [], "buffers": [],
        }
        self._chunks: list[bytes] = []
        self._length = 0

    def _add_view(self, data: bytes, target: int) -> int:
        pad = -self._length % 4
        self._chunks.append(b"\0" * pad + data)
        self.gltf["bufferViews"].append(
            {"buffer": 0, "byteOffset": self._length + pad, "byteLength": len(data), "target": target})
        self._length += pad + len(data)
        return len(self.gltf["bufferViews"]) - 1

    def _add_accessor(self, array: np.ndarray, kind: str, *, indices: bool = False, bounds: bool = False) -> int:
        dtype, component = (np.uint32, _UINT32) if indices else (np.float32, _FLOAT)
        data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
        view = self._add_view(data.tobytes(), _ELEMENT_ARRAY_BUFFER if indices else _ARRAY_BUFFER)
        count = data.size if indices else data.shape[0]
        accessor: dict[str, Any] = {"bufferView": view, "componentType": component, "count": int(count), "type": kind}
        if bounds and count:
            accessor["min"] = [float(x) for x in data.min(axis=0)]
            accessor["max"] = [float(x) for x in data.max(axis=0)]
        self.gltf["accessors"].append(accessor)
        return len(self.gltf["accessors"]) - 1

    def vertex_colour_material(self) -> int:
        """A plain PBR material; glTF multiplies the base colour by COLOR_0."""
        self.gltf["materials"].append({
            "name": "iscene_vertex_colour",
            "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
                                     "roughnessFactor": 1.0},
            "doubleSided": True,
        })
        return len(self.gltf["materials"]) - 1

    def add_instance(self, instance: ExportInstance, material: int, normals: bool) -> None:
        mesh, name = instance.mesh, instance_name(instance.label)
        if mesh.face_count == 0:
            raise ValueError(f"{name} has no faces; glTF accessors cannot be empty")
        attributes = {"POSITION": self._add_accessor(mesh.vertices @ S_TO_GLTF.T, "VEC3", bounds=True)}
        if normals:
            attributes["NORMAL"] = self._add_accessor(vertex_normals(mesh.vertices, mesh.faces) @ S_TO_GLTF.T, "VEC3")
        attributes["COLOR_0"] = self._add_accessor(srgb_to_linear(mesh.colors), "VEC3")
        primitive = {"attributes": attributes, "indices": self._add_accessor(mesh.faces, "SCALAR", indices=True),
                     "material": material, "mode": _TRIANGLES}
        extras = instance.node_extras()
        self.gltf["meshes"].append({"name": name, "primitives": [primitive], "extras": extras})
        self.gltf["nodes"].append({"name": name, "mesh": len(self.gltf["meshes"]) - 1, "extras": extras})
        self.gltf["scenes"][0]["nodes"].append(len(self.gltf["nodes"]) - 1)

    def to_bytes(self) -> bytes:
        binary = b"".join(self._chunks)
        binary += b"\0" * (-len(binary) % 4)
        self.gltf["buffers"] = [{"byteLength": len(binary)}]
        text = json.dumps(self.gltf, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
        text += b" " * (-len(text) % 4)
        total = 12 + 8 + len(text) + 8 + len(binary)
        return b"".join([
            struct.pack("<III", _GLB_MAGIC, _GLB_VERSION, total),
            struct.pack("<II", len(text), _CHUNK_JSON), text,
            struct.pack("<II", len(binary), _CHUNK_BIN), binary,
        ])


def glb_bytes(instances: Sequence[ExportInstance], *, normals: bool = True) -> bytes:
    """A GLB with one node (and mesh) per instance, in the given order, all in one frame."""
    builder = _GlbBuilder()
    material = builder.vertex_colour_material()
    for instance in instances:
        builder.add_instance(instance, material, normals)
    return builder.to_bytes()


def _write_atomic(path: Path, data: bytes) -> Path:
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
    return path


def write_instance_glb(path: str | Path, mesh: ColoredMesh, *, label: int, seed: int,
                       model_ids: Mapping[str, str], extras: Mapping[str, Any] | None = None,
                       normals: bool = True) -> Path:
    """Write one instance as a GLB: node and mesh ``instance_<label>``; extras label/seed/models/…"""
    instance = ExportInstance(mesh, label, seed, model_ids, extras or {})
    return _write_atomic(Path(path), glb_bytes([instance], normals=normals))


def read_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON document and binary chunk of a GLB container."""
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != _GLB_VERSION or total != len(data):
        raise ValueError("not a glTF 2.0 binary (GLB) file")
    json_length, kind = struct.unpack_from("<II", data, 12)
    if kind != _CHUNK_JSON:
        raise ValueError("GLB does not start with a JSON chunk")
    document = json.loads(data[20:20 + json_length])
    offset = 20 + json_length
    binary = b""
    if offset < len(data):
        bin_length, kind = struct.unpack_from("<II", data, offset)
        if kind != _CHUNK_BIN:
            raise ValueError("GLB second chunk is not binary")
        binary = data[offset + 8:offset + 8 + bin_length]
    return document, binary


def merge_glb(parts: Sequence[bytes]) -> bytes:
    """One GLB holding every node of ``parts`` (GLBs written by this module), byte-for-byte the same
    geometry: buffers are concatenated and indices renumbered, nothing is re-encoded."""
    builder = _GlbBuilder()
    gltf = builder.gltf
    for part in parts:
        document, binary = read_glb(part)
        views, accessors, meshes = len(gltf["bufferViews"]), len(gltf["accessors"]), len(gltf["meshes"])
        base = builder._length + (-builder._length % 4)
        builder._chunks.append(b"\0" * (base - builder._length) + binary)
        builder._length = base + len(binary)
        gltf["bufferViews"] += [{**view, "byteOffset": view.get("byteOffset", 0) + base}
                                for view in document["bufferViews"]]
        gltf["accessors"] += [{**acc, "bufferView": acc["bufferView"] + views} for acc in document["accessors"]]
        materials = [_material_index(gltf, material) for material in document.get("materials", [])]
        for mesh in document["meshes"]:
            primitives = [{**prim, "attributes": {k: v + accessors for k, v in prim["attributes"].items()},
                           "indices": prim["indices"] + accessors, "material": materials[prim["material"]]}
                          for prim in mesh["primitives"]]
            gltf["meshes"].append({**mesh, "primitives": primitives})
        for node in document["nodes"]:
            gltf["nodes"].append({**node, "mesh": node["mesh"] + meshes})
            gltf["scenes"][0]["nodes"].append(len(gltf["nodes"]) - 1)
    names = [node["name"] for node in gltf["nodes"]]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate instance nodes: {names}")
    return builder.to_bytes()


def _accessor(gltf: dict[str, Any], binary: bytes, index: int) -> np.ndarray:
    accessor = gltf["accessors"][index]
    view = gltf["bufferViews"][accessor["bufferView"]]
    dtype = {_FLOAT: "<f4", _UINT32: "<u4"}[accessor["componentType"]]
    width = {"SCALAR": 1, "VEC3": 3}[accessor["type"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    data = np.frombuffer(binary, dtype=dtype, count=accessor["count"] * width, offset=start)
    return data.reshape(-1, width) if width > 1 else data


def linear_to_srgb(colors: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(colors, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def read_instance_mesh(data: bytes) -> ColoredMesh:
    """The (first) mesh of a GLB written by this module, back in the scene frame S with sRGB colours."""
    gltf, binary = read_glb(data)
    primitive = gltf["meshes"][0]["primitives"][0]
    vertices = _accessor(gltf, binary, primitive["attributes"]["POSITION"]) @ S_TO_GLTF  # inverse of S_TO_GLTF.T
    colors = linear_to_srgb(_accessor(gltf, binary, primitive["attributes"]["COLOR_0"]))
    faces = _accessor(gltf, binary, primitive["indices"]).reshape(-1, 3).astype(np.int64)
    return ColoredMesh(vertices, faces, colors)


def _material_index(gltf: dict[str, Any], material: dict[str, Any]) -> int:
    """Index of an identical material already in ``gltf``, appending it if there is none."""
    if material not in gltf["materials"]:
        gltf["materials"].append(material)
    return gltf["materials"].index(material)


def write_scene_glb(path: str | Path, instance_files: Sequence[str | Path]) -> Path:
    """``scene.glb``: every instance GLB merged into one file, one node per instance, no transforms."""
    return _write_atomic(Path(path), merge_glb([Path(f).read_bytes() for f in instance_files]))


# ---- 3D Gaussians ------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class GaussianParams:
    """Activated 3D Gaussian parameters in S: positions, SH degree-0 colour, opacity in (0, 1),
    per-axis scales (> 0) and unit rotation quaternions, real part first (w, x, y, z)."""

    xyz: np.ndarray  # [G, 3]
    features_dc: np.ndarray  # [G, 3] (a [G, 1, 3] TRELLIS tensor is accepted)
    opacity: np.ndarray  # [G] (or [G, 1])
    scaling: np.ndarray  # [G, 3]
    rotation: np.ndarray  # [G, 4] wxyz

    def __post_init__(self) -> None:
        count = len(np.asarray(self.xyz))
        shapes = {"xyz": (count, 3), "features_dc": (count, 3), "opacity": (count,),
                  "scaling": (count, 3), "rotation": (count, 4)}
        for name, shape in shapes.items():
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.size != int(np.prod(shape)):
                raise ValueError(f"{name} must hold {shape}, got {value.shape}")
            object.__setattr__(self, name, value.reshape(shape))

    @property
    def count(self) -> int:
        return int(self.xyz.shape[0])


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] of quaternions [..., 4] (w, x, y, z); normalises first."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """Unit quaternions [..., 4] (w, x, y, z; w ≥ 0) of rotation matrices [..., 3, 3].

    Each quaternion is taken from the row of the 4×4 symmetric "K" form with the largest diagonal
    term, which keeps the division well conditioned for every rotation.
    """
    m = np.asarray(m, dtype=np.float64)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    candidates = np.stack([
        np.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),  # 4w·q
        np.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),  # 4x·q
        np.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),  # 4y·q
        np.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),  # 4z·q
    ], axis=-2)
    diagonal = np.stack([candidates[..., i, i] for i in range(4)], -1)
    best = np.take_along_axis(candidates, diagonal.argmax(-1)[..., None, None], axis=-2)[..., 0, :]
    q = best / np.linalg.norm(best, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


PLY_PROPERTIES = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                   "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def gaussian_ply_records(gaussians: GaussianParams, transform: np.ndarray | None = S_TO_PLY) -> np.ndarray:
    """The [G, 17] float32 rows of a 3DGS PLY (column order ``PLY_PROPERTIES``)."""
    xyz, rotation = gaussians.xyz, gaussians.rotation
    if transform is not None:
        t = np.asarray(transform, dtype=np.float64)
        xyz = xyz @ t.T
        rotation = matrix_to_quaternion(t @ quaternion_to_matrix(rotation))
    else:
        rotation = rotation / np.linalg.norm(rotation, axis=-1, keepdims=True)
    eps = 1e-7
    opacity = np.clip(gaussians.opacity, eps, 1 - eps)
    columns = [xyz, np.zeros_like(xyz), gaussians.features_dc, np.log(opacity / (1 - opacity))[:, None],
               np.log(gaussians.scaling), rotation]
    return np.concatenate(columns, axis=1).astype(np.float32)


def write_gaussian_ply(path: str | Path, gaussians: GaussianParams,
                       transform: np.ndarray | None = S_TO_PLY) -> Path:
    """Write 3D Gaussians in the standard 3DGS PLY layout (binary little endian, float32 properties;
    opacity as logit, scales as log, rotation as unit wxyz), positions and rotations mapped by
    ``transform`` (TRELLIS' default; None keeps S)."""
    records = np.ascontiguousarray(gaussian_ply_records(gaussians, transform), dtype="<f4")
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {gaussians.count}",
                        *(f"property float {name}" for name in PLY_PROPERTIES), "end_header"]) + "\n"
    return _write_atomic(Path(path), header.encode("ascii") + records.tobytes())
