"""Reading the server's instance GLBs into arrays (stdlib + numpy): positions in the scene frame S (z up),
triangles, linear vertex colours, the UVs and base-colour PNG of a baked mesh, and the node extras.

A deliberate copy (the add-on imports nothing from the server) of the server's GLB reader,
``iscene_server/geometry/glb_reader.py`` (``read_glb``, ``read_instance_mesh``), and of its axis convention
``S_TO_GLTF`` in ``iscene_server/geometry/gltf.py``; unlike the original it also reads the normalised integer
colours other glTF writers use, returns linear colours (white where a mesh has no ``COLOR_0``; for a baked mesh
the importer samples them from the texture once Blender has decoded it: :func:`png.texture_colours`) and the
texture as its PNG bytes. ``tests/test_addon_copies.py`` checks
that both read the same arrays from the same bytes and refuse the same broken files.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

_MAGIC, _JSON, _BIN = 0x46546C67, 0x4E4F534A, 0x004E4942
_DTYPES = {5126: "<f4", 5125: "<u4", 5123: "<u2", 5121: "u1"}
_WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}

# p_S = GLTF_TO_S @ p_glTF: glTF is y up, S is z up, so (x, y, z)_glTF -> (x, -z, y)_S; the inverse (and
# transpose) of the server's S_TO_GLTF.
GLTF_TO_S = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float32)


@dataclass
class MeshArrays:
    vertices: np.ndarray  # float32 [V, 3] in S
    faces: np.ndarray  # int32 [F, 3]
    colors: np.ndarray  # float32 [V, 4] linear RGBA
    extras: dict
    uvs: np.ndarray | None = None  # float32 [V, 2] glTF UVs (v down), with ``texture``
    texture: bytes | None = None  # the base-colour texture's PNG file, if the mesh is baked
    vertex_colors: bool = True  # whether ``colors`` came from COLOR_0 (else they are white)


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """The JSON document and binary chunk of a GLB container; ``ValueError`` for anything else."""
    try:
        magic, version, length = struct.unpack_from("<III", data, 0)
        if magic != _MAGIC or version != 2 or length != len(data):
            raise ValueError("not a glTF 2.0 binary (GLB) file")
        json_length, kind = struct.unpack_from("<II", data, 12)
        if kind != _JSON:
            raise ValueError("GLB does not start with a JSON chunk")
        document = json.loads(data[20:20 + json_length])
        offset = 20 + json_length
        binary = b""
        if offset < len(data):
            bin_length, kind = struct.unpack_from("<II", data, offset)
            if kind != _BIN:
                raise ValueError("GLB second chunk is not binary")
            binary = data[offset + 8:offset + 8 + bin_length]
    except struct.error as err:
        raise ValueError(f"truncated GLB file ({err})") from err
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
    """The first mesh of a GLB, with glTF's y up mapped back to S (:data:`GLTF_TO_S`)."""
    document, binary = read_glb(data)
    primitive = document["meshes"][0]["primitives"][0]
    position = _accessor(document, binary, primitive["attributes"]["POSITION"]).astype(np.float32)  # [V, 3]
    vertices = position @ GLTF_TO_S.T  # [V, 3] in S
    faces = _accessor(document, binary, primitive["indices"]).reshape(-1, 3).astype(np.int32)
    if "COLOR_0" in primitive["attributes"]:
        colors = _accessor(document, binary, primitive["attributes"]["COLOR_0"]).astype(np.float32)
        if colors.shape[1] == 3:
            colors = np.concatenate([colors, np.ones((len(colors), 1), np.float32)], axis=1)
    else:
        colors = np.ones((len(vertices), 4), np.float32)
    extras = (document.get("nodes") or [{}])[0].get("extras", {})
    texture = _base_colour_png(document, binary, primitive.get("material"))
    uvs = None
    if texture is not None:
        uvs = _accessor(document, binary, primitive["attributes"]["TEXCOORD_0"]).astype(np.float32)  # [V, 2]
    return MeshArrays(vertices, faces, colors, extras, uvs, texture, "COLOR_0" in primitive["attributes"])


def _base_colour_png(document: dict, binary: bytes, material: int | None) -> bytes | None:
    """The PNG bytes of material ``material``'s base-colour texture (None without one)."""
    if material is None:
        return None
    reference = document["materials"][material].get("pbrMetallicRoughness", {}).get("baseColorTexture")
    if reference is None:
        return None
    image = document["images"][document["textures"][reference["index"]]["source"]]
    view = document["bufferViews"][image["bufferView"]]
    start = view.get("byteOffset", 0)
    return bytes(binary[start:start + view["byteLength"]])
