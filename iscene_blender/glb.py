"""Reading the server's instance GLBs into arrays (stdlib + numpy): positions in the scene frame S (z up),
triangles, linear vertex colours and the node extras."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

_MAGIC, _JSON, _BIN = 0x46546C67, 0x4E4F534A, 0x004E4942
_DTYPES = {5126: "<f4", 5125: "<u4", 5123: "<u2", 5121: "u1"}
_WIDTHS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}


@dataclass
class MeshArrays:
    vertices: np.ndarray  # float32 [V, 3] in S
    faces: np.ndarray  # int32 [F, 3]
    colors: np.ndarray  # float32 [V, 4] linear RGBA
    extras: dict


def _chunks(data: bytes) -> tuple[dict, bytes]:
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != _MAGIC or version != 2:
        raise ValueError("not a binary glTF 2.0 file")
    json_length, kind = struct.unpack_from("<II", data, 12)
    if kind != _JSON:
        raise ValueError("GLB without a JSON chunk")
    document = json.loads(data[20:20 + json_length])
    offset = 20 + json_length
    binary = b""
    if offset + 8 <= len(data):
        bin_length, kind = struct.unpack_from("<II", data, offset)
        if kind == _BIN:
            binary = data[offset + 8:offset + 8 + bin_length]
    return document, binary


def _accessor(document: dict, binary: bytes, index: int) -> np.ndarray:
    accessor = document["accessors"][index]
    view = document["bufferViews"][accessor["bufferView"]]
    width = _WIDTHS[accessor["type"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    values = np.frombuffer(binary, dtype=_DTYPES[accessor["componentType"]], count=accessor["count"] * width,
                           offset=start)
    if accessor.get("normalized"):
        values = values / np.iinfo(values.dtype).max
    return values.reshape(-1, width)


def read_mesh(data: bytes) -> MeshArrays:
    """The first mesh of a GLB, with glTF's y-up mapped back to S: (x, y, z)_gltf -> (x, -z, y)."""
    document, binary = _chunks(data)
    primitive = document["meshes"][0]["primitives"][0]
    position = _accessor(document, binary, primitive["attributes"]["POSITION"]).astype(np.float32)
    vertices = np.stack([position[:, 0], -position[:, 2], position[:, 1]], axis=1)
    faces = _accessor(document, binary, primitive["indices"]).reshape(-1, 3).astype(np.int32)
    if "COLOR_0" in primitive["attributes"]:
        colors = _accessor(document, binary, primitive["attributes"]["COLOR_0"]).astype(np.float32)
        if colors.shape[1] == 3:
            colors = np.concatenate([colors, np.ones((len(colors), 1), np.float32)], axis=1)
    else:
        colors = np.ones((len(vertices), 4), np.float32)
    extras = (document.get("nodes") or [{}])[0].get("extras", {})
    return MeshArrays(vertices, faces, colors, extras)
