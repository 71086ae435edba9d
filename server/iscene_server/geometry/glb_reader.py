"""Reading the GLB files :mod:`.glb_writer` writes: the container, accessors, and an instance's mesh back in S."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np
from PIL import Image

from .colour import linear_to_srgb
from .gltf import CHUNK_BIN, CHUNK_HEADER, CHUNK_JSON, FLOAT, GLB_HEADER, GLB_MAGIC, GLB_VERSION, S_TO_GLTF, UINT32
from .postprocess import ColoredMesh
from .texture.sampling import sample_bilinear

COMPONENT_DTYPES = {FLOAT: "<f4", UINT32: "<u4"}
TYPE_WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}


def read_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON document and binary chunk of a GLB container."""
    magic, version, total = struct.unpack_from(GLB_HEADER, data, 0)
    if magic != GLB_MAGIC or version != GLB_VERSION or total != len(data):
        raise ValueError("not a glTF 2.0 binary (GLB) file")
    json_length, kind = struct.unpack_from(CHUNK_HEADER, data, 12)
    if kind != CHUNK_JSON:
        raise ValueError("GLB does not start with a JSON chunk")
    document = json.loads(data[20:20 + json_length])
    offset = 20 + json_length
    binary = b""
    if offset < len(data):
        bin_length, kind = struct.unpack_from(CHUNK_HEADER, data, offset)
        if kind != CHUNK_BIN:
            raise ValueError("GLB second chunk is not binary")
        binary = data[offset + 8:offset + 8 + bin_length]
    return document, binary


def read_accessor(gltf: dict[str, Any], binary: bytes, index: int) -> np.ndarray:
    """Accessor ``index`` as an array: ``[count]`` for scalars, ``[count, width]`` for vectors."""
    accessor = gltf["accessors"][index]
    view = gltf["bufferViews"][accessor["bufferView"]]
    dtype = COMPONENT_DTYPES[accessor["componentType"]]
    width = TYPE_WIDTHS[accessor["type"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    data = np.frombuffer(binary, dtype=dtype, count=accessor["count"] * width, offset=start)
    return data.reshape(-1, width) if width > 1 else data


def read_base_colour_texture(gltf: dict[str, Any], binary: bytes, material: int) -> np.ndarray | None:
    """The base-colour texture ``[H, W, 3]`` (uint8, sRGB) of material ``material``, or None if it has none."""
    reference = gltf["materials"][material].get("pbrMetallicRoughness", {}).get("baseColorTexture")
    if reference is None:
        return None
    image = gltf["images"][gltf["textures"][reference["index"]]["source"]]
    view = gltf["bufferViews"][image["bufferView"]]
    start = view.get("byteOffset", 0)
    with Image.open(io.BytesIO(binary[start:start + view["byteLength"]])) as png:
        return np.asarray(png.convert("RGB"))


def read_instance_mesh(data: bytes) -> ColoredMesh:
    """The (first) mesh of a GLB written by :mod:`.glb_writer`, back in the scene frame S with sRGB colours, its
    UVs and texture when baked. Vertex colours come from ``COLOR_0``, or (left out) from the texture at the UVs."""
    gltf, binary = read_glb(data)
    primitive = gltf["meshes"][0]["primitives"][0]
    attributes = primitive["attributes"]
    vertices = read_accessor(gltf, binary, attributes["POSITION"]) @ S_TO_GLTF  # inverse of S_TO_GLTF.T
    faces = read_accessor(gltf, binary, primitive["indices"]).reshape(-1, 3).astype(np.int64)
    texture = read_base_colour_texture(gltf, binary, primitive["material"]) if "material" in primitive else None
    uvs = read_accessor(gltf, binary, attributes["TEXCOORD_0"]) if texture is not None else None
    if "COLOR_0" in attributes:
        colors = linear_to_srgb(read_accessor(gltf, binary, attributes["COLOR_0"]))
    elif texture is not None:
        colors = sample_bilinear(texture, uvs)
    else:
        raise ValueError("the GLB's mesh has neither vertex colours nor a base-colour texture")
    return ColoredMesh(vertices, faces, colors, uvs, texture)
