"""Writing binary glTF (GLB): one node and mesh per instance, with vertex colours and metadata in ``extras``.

The GLB is written by this small writer rather than trimesh: we need node extras, an untextured vertex-colour
material and byte-identical output for identical input, all of which are a few lines of the glTF 2.0 container
format. Output bytes depend only on the arguments. Frames: see :mod:`.gltf`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_atomic
from .colour import srgb_to_linear
from .glb_reader import read_glb
from .gltf import (
    ARRAY_BUFFER,
    CHUNK_BIN,
    CHUNK_HEADER,
    CHUNK_JSON,
    ELEMENT_ARRAY_BUFFER,
    FLOAT,
    GLB_HEADER,
    GLB_MAGIC,
    GLB_VERSION,
    S_TO_GLTF,
    TRIANGLES,
    UINT32,
    instance_name,
)
from .postprocess import ColoredMesh

GENERATOR = "iscene-server"


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


class GlbBuilder:
    """Accumulates glTF JSON and one binary buffer; ``to_bytes`` gives the GLB container."""

    def __init__(self) -> None:
        self.gltf: dict[str, Any] = {
            "asset": {"version": "2.0", "generator": GENERATOR},
            "scene": 0, "scenes": [{"nodes": []}], "nodes": [], "meshes": [], "materials": [],
            "accessors": [], "bufferViews": [], "buffers": [],
        }
        self._chunks: list[bytes] = []
        self._length = 0

    def append_binary(self, data: bytes) -> int:
        """Append ``data`` to the binary buffer at the next 4-byte boundary; returns its byte offset there."""
        offset = self._length + (-self._length % 4)
        self._chunks.append(b"\0" * (offset - self._length) + data)
        self._length = offset + len(data)
        return offset

    def _add_view(self, data: bytes, target: int) -> int:
        offset = self.append_binary(data)
        self.gltf["bufferViews"].append({"buffer": 0, "byteOffset": offset, "byteLength": len(data), "target": target})
        return len(self.gltf["bufferViews"]) - 1

    def _add_accessor(self, array: np.ndarray, kind: str, *, indices: bool = False, bounds: bool = False) -> int:
        dtype, component = (np.uint32, UINT32) if indices else (np.float32, FLOAT)
        data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
        view = self._add_view(data.tobytes(), ELEMENT_ARRAY_BUFFER if indices else ARRAY_BUFFER)
        count = data.size if indices else data.shape[0]
        accessor: dict[str, Any] = {"bufferView": view, "componentType": component, "count": int(count), "type": kind}
        if bounds and count:
            accessor["min"] = [float(x) for x in data.min(axis=0)]
            accessor["max"] = [float(x) for x in data.max(axis=0)]
        self.gltf["accessors"].append(accessor)
        return len(self.gltf["accessors"]) - 1

    def vertex_colour_material(self) -> int:
        """A plain PBR material; glTF multiplies the base colour by COLOR_0."""
        return self.material_index({
            "name": "iscene_vertex_colour",
            "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
                                     "roughnessFactor": 1.0},
            "doubleSided": True,
        })

    def material_index(self, material: dict[str, Any]) -> int:
        """Index of an identical material already in the document, appending it if there is none."""
        materials = self.gltf["materials"]
        if material not in materials:
            materials.append(material)
        return materials.index(material)

    def add_instance(self, instance: ExportInstance, material: int, normals: bool) -> None:
        mesh, name = instance.mesh, instance_name(instance.label)
        if mesh.face_count == 0:
            raise ValueError(f"{name} has no faces; glTF accessors cannot be empty")
        attributes = {"POSITION": self._add_accessor(mesh.vertices @ S_TO_GLTF.T, "VEC3", bounds=True)}
        if normals:
            attributes["NORMAL"] = self._add_accessor(vertex_normals(mesh.vertices, mesh.faces) @ S_TO_GLTF.T, "VEC3")
        attributes["COLOR_0"] = self._add_accessor(srgb_to_linear(mesh.colors), "VEC3")
        primitive = {"attributes": attributes, "indices": self._add_accessor(mesh.faces, "SCALAR", indices=True),
                     "material": material, "mode": TRIANGLES}
        extras = instance.node_extras()
        mesh_index = self.add_mesh({"name": name, "primitives": [primitive], "extras": extras})
        self.add_node({"name": name, "mesh": mesh_index, "extras": extras})

    def add_mesh(self, mesh: dict[str, Any]) -> int:
        """Append a glTF mesh (its accessors already added); returns its index."""
        self.gltf["meshes"].append(mesh)
        return len(self.gltf["meshes"]) - 1

    def add_node(self, node: dict[str, Any]) -> int:
        """Append a node as a root of the scene; returns its index."""
        self.gltf["nodes"].append(node)
        self.gltf["scenes"][0]["nodes"].append(len(self.gltf["nodes"]) - 1)
        return len(self.gltf["nodes"]) - 1

    def to_bytes(self) -> bytes:
        binary = b"".join(self._chunks)
        binary += b"\0" * (-len(binary) % 4)
        self.gltf["buffers"] = [{"byteLength": len(binary)}]
        text = json.dumps(self.gltf, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
        text += b" " * (-len(text) % 4)
        total = 12 + 8 + len(text) + 8 + len(binary)
        return b"".join([
            struct.pack(GLB_HEADER, GLB_MAGIC, GLB_VERSION, total),
            struct.pack(CHUNK_HEADER, len(text), CHUNK_JSON), text,
            struct.pack(CHUNK_HEADER, len(binary), CHUNK_BIN), binary,
        ])


def glb_bytes(instances: Sequence[ExportInstance], *, normals: bool = True) -> bytes:
    """A GLB with one node (and mesh) per instance, in the given order, all in one frame."""
    builder = GlbBuilder()
    material = builder.vertex_colour_material()
    for instance in instances:
        builder.add_instance(instance, material, normals)
    return builder.to_bytes()


def write_instance_glb(path: str | Path, mesh: ColoredMesh, *, label: int, seed: int,
                       model_ids: Mapping[str, str], extras: Mapping[str, Any] | None = None,
                       normals: bool = True) -> Path:
    """Write one instance as a GLB: node and mesh ``instance_<label>``; extras label/seed/models/…"""
    instance = ExportInstance(mesh, label, seed, model_ids, extras or {})
    return write_atomic(path, glb_bytes([instance], normals=normals))


def merge_glb(parts: Sequence[bytes]) -> bytes:
    """One GLB holding every node of ``parts`` (GLBs written by this module), byte-for-byte the same
    geometry: buffers are concatenated and indices renumbered, nothing is re-encoded."""
    builder = GlbBuilder()
    gltf = builder.gltf
    for part in parts:
        document, binary = read_glb(part)
        views, accessors, meshes = len(gltf["bufferViews"]), len(gltf["accessors"]), len(gltf["meshes"])
        base = builder.append_binary(binary)
        gltf["bufferViews"] += [{**view, "byteOffset": view.get("byteOffset", 0) + base}
                                for view in document["bufferViews"]]
        gltf["accessors"] += [{**acc, "bufferView": acc["bufferView"] + views} for acc in document["accessors"]]
        materials = [builder.material_index(material) for material in document.get("materials", [])]
        for mesh in document["meshes"]:
            primitives = [{**prim, "attributes": {k: v + accessors for k, v in prim["attributes"].items()},
                           "indices": prim["indices"] + accessors, "material": materials[prim["material"]]}
                          for prim in mesh["primitives"]]
            builder.add_mesh({**mesh, "primitives": primitives})
        for node in document["nodes"]:
            builder.add_node({**node, "mesh": node["mesh"] + meshes})
    names = [node["name"] for node in gltf["nodes"]]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate instance nodes: {names}")
    return builder.to_bytes()


def write_scene_glb(path: str | Path, instance_files: Sequence[str | Path]) -> Path:
    """``scene.glb``: every instance GLB merged into one file, one node per instance, no transforms."""
    return write_atomic(path, merge_glb([Path(f).read_bytes() for f in instance_files]))
