"""Writing binary glTF (GLB): one node and mesh per instance, with vertex colours and metadata in ``extras``.

The GLB is written by this small writer rather than trimesh: we need node extras, a vertex-colour or baked-texture
material and byte-identical output for identical input, all of which are a few lines of the glTF 2.0 container
format. Output bytes depend only on the arguments. Frames: see :mod:`.gltf`.

A baked mesh (:attr:`ColoredMesh.textured`) gets ``TEXCOORD_0`` and a material of its own whose
``baseColorTexture`` is its texture, embedded as a PNG, and no ``COLOR_0`` unless ``vertex_colors=True`` (glTF
multiplies the two, so viewers that honour ``COLOR_0`` on a textured mesh show it darker); the server's and the
add-on's readers then take the vertex colours from the texture at the UVs. An unbaked mesh always has ``COLOR_0``.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..atomic import write_atomic
from .colour import srgb_to_linear
from .glb_reader import read_glb
from .gltf import (
    ARRAY_BUFFER,
    CHUNK_BIN,
    CHUNK_HEADER,
    CHUNK_JSON,
    CLAMP_TO_EDGE,
    ELEMENT_ARRAY_BUFFER,
    FLOAT,
    GLB_HEADER,
    GLB_MAGIC,
    GLB_VERSION,
    LINEAR,
    LINEAR_MIPMAP_LINEAR,
    PNG,
    S_TO_GLTF,
    TRIANGLES,
    UINT32,
    instance_name,
)
from .postprocess import ColoredMesh

GENERATOR = "iscene-server"
TEXTURE_SAMPLER = {"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR, "wrapS": CLAMP_TO_EDGE,
                   "wrapT": CLAMP_TO_EDGE}  # the filtering the bake's gutter fill is made for


PNG_COMPRESS_LEVEL = 3
"""zlib level of the embedded textures: at 1024² 0.07 s and 0.93 MB, against 0.17 s and 0.81 MB at Pillow's default
6 (bench/RESULTS.md); the export runs between two objects' decodes, so its time counts more than 0.1 MB."""


def png_bytes(texture: np.ndarray) -> bytes:
    """``texture [H, W, 3]`` (uint8, sRGB) as PNG file bytes (the same bytes for the same texels)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(texture, dtype=np.uint8), "RGB").save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


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

    def _add_view(self, data: bytes, target: int | None) -> int:
        """A buffer view of ``data``; ``target`` None for images (glTF gives their views none)."""
        offset = self.append_binary(data)
        view = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        self.gltf["bufferViews"].append(view if target is None else {**view, "target": target})
        return len(self.gltf["bufferViews"]) - 1

    def _append(self, kind: str, item: dict[str, Any]) -> int:
        """Append to the top-level array ``kind`` (created on first use: glTF forbids empty arrays)."""
        items = self.gltf.setdefault(kind, [])
        items.append(item)
        return len(items) - 1

    def sampler_index(self, sampler: dict[str, Any]) -> int:
        """Index of an identical sampler already in the document, appending it if there is none."""
        samplers = self.gltf.get("samplers", [])
        return samplers.index(sampler) if sampler in samplers else self._append("samplers", sampler)

    def add_texture(self, image: dict[str, Any], sampler: dict[str, Any]) -> int:
        """A texture of ``image`` (an ``images`` entry, its buffer view already added) read through ``sampler``."""
        return self._append("textures", {"sampler": self.sampler_index(sampler),
                                         "source": self._append("images", image)})

    def baked_material(self, name: str, texture: np.ndarray) -> int:
        """A material of its own whose base colour is ``texture [H, W, 3]`` (embedded as a PNG)."""
        image = {"bufferView": self._add_view(png_bytes(texture), None), "mimeType": PNG}
        index = self.add_texture(image, TEXTURE_SAMPLER)
        return self.material_index({
            "name": f"{name}_baked",
            "pbrMetallicRoughness": {"baseColorTexture": {"index": index}, "metallicFactor": 0.0,
                                     "roughnessFactor": 1.0},
            "doubleSided": True,
        })

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

    def add_instance(self, instance: ExportInstance, normals: bool, vertex_colors: bool = False) -> None:
        """One node and mesh; a baked mesh gets its texture material, any other the shared vertex-colour one.
        ``vertex_colors=True`` keeps ``COLOR_0`` on a baked mesh too (an unbaked one always has it)."""
        mesh, name = instance.mesh, instance_name(instance.label)
        if mesh.face_count == 0:
            raise ValueError(f"{name} has no faces; glTF accessors cannot be empty")
        attributes = {"POSITION": self._add_accessor(mesh.vertices @ S_TO_GLTF.T, "VEC3", bounds=True)}
        if normals:
            attributes["NORMAL"] = self._add_accessor(vertex_normals(mesh.vertices, mesh.faces) @ S_TO_GLTF.T, "VEC3")
        if vertex_colors or not mesh.textured:
            attributes["COLOR_0"] = self._add_accessor(srgb_to_linear(mesh.colors), "VEC3")
        if mesh.textured:
            attributes["TEXCOORD_0"] = self._add_accessor(mesh.uvs, "VEC2")
            material = self.baked_material(name, mesh.texture)
        else:
            material = self.vertex_colour_material()
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


def glb_bytes(instances: Sequence[ExportInstance], *, normals: bool = True, vertex_colors: bool = False) -> bytes:
    """A GLB with one node (and mesh) per instance, in the given order, all in one frame."""
    builder = GlbBuilder()
    for instance in instances:
        builder.add_instance(instance, normals, vertex_colors)
    return builder.to_bytes()


def write_instance_glb(path: str | Path, mesh: ColoredMesh, *, label: int, seed: int,
                       model_ids: Mapping[str, str], extras: Mapping[str, Any] | None = None,
                       normals: bool = True, vertex_colors: bool = False) -> Path:
    """Write one instance as a GLB: node and mesh ``instance_<label>``; extras label/seed/models/…"""
    instance = ExportInstance(mesh, label, seed, model_ids, extras or {})
    return write_atomic(path, glb_bytes([instance], normals=normals, vertex_colors=vertex_colors))


def _renumbered_material(material: dict[str, Any], textures: list[int]) -> dict[str, Any]:
    """``material`` with its base-colour texture index mapped through ``textures`` (old index -> new)."""
    pbr = material.get("pbrMetallicRoughness", {})
    if "baseColorTexture" not in pbr:
        return material
    base = {**pbr["baseColorTexture"], "index": textures[pbr["baseColorTexture"]["index"]]}
    return {**material, "pbrMetallicRoughness": {**pbr, "baseColorTexture": base}}


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
        samplers = document.get("samplers", [])
        textures = [builder.add_texture({**document["images"][t["source"]],
                                         "bufferView": document["images"][t["source"]]["bufferView"] + views},
                                        samplers[t["sampler"]]) for t in document.get("textures", [])]
        materials = [builder.material_index(_renumbered_material(material, textures))
                     for material in document.get("materials", [])]
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
