"""Writing one triangle mesh as a glTF 2.0 binary (GLB), stdlib + numpy: the context objects Refine sends.

One mesh, one node, one primitive (mode 4, triangles): POSITION float32 VEC3, indices uint32 and, when given,
COLOR_0 float32 VEC4 (linear RGBA, as glTF stores vertex colours). Positions are written as given, already in
glTF's y-up frame; the caller converts them (:data:`.glb.GLTF_TO_S` is the axis convention).
"""

from __future__ import annotations

import json
import struct

import numpy as np

GLB_MAGIC, GLB_VERSION = 0x46546C67, 2
CHUNK_JSON, CHUNK_BIN = 0x4E4F534A, 0x004E4942
FLOAT, UINT32 = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
TRIANGLES = 4
GENERATOR = "I-Scene for Blender"


def _padded(data: bytes, fill: bytes) -> bytes:
    """``data`` padded to a multiple of 4 bytes (GLB chunks and accessors are 4-byte aligned)."""
    return data + fill * (-len(data) % 4)


def glb_bytes(positions: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None, name: str = "mesh") -> bytes:
    """A GLB of one mesh: ``positions`` float [V, 3] (glTF frame), ``faces`` int [F, 3] indexing them,
    ``colors`` float [V, 4] linear RGBA or None (the reader's default colour)."""
    positions = np.ascontiguousarray(positions, dtype="<f4").reshape(-1, 3)  # [V, 3]
    faces = np.ascontiguousarray(faces, dtype="<u4").reshape(-1, 3)  # [F, 3]
    if len(faces) and int(faces.max()) >= len(positions):
        raise ValueError(f"a face indexes vertex {int(faces.max())} of {len(positions)}")
    arrays = [(positions, FLOAT, "VEC3", ARRAY_BUFFER)]
    if colors is not None:
        colors = np.ascontiguousarray(colors, dtype="<f4").reshape(-1, 4)  # [V, 4]
        if len(colors) != len(positions):
            raise ValueError(f"{len(colors)} colours for {len(positions)} vertices")
        arrays.append((colors, FLOAT, "VEC4", ARRAY_BUFFER))
    arrays.append((faces.reshape(-1), UINT32, "SCALAR", ELEMENT_ARRAY_BUFFER))  # [3F]

    binary, views, accessors = b"", [], []
    for values, component, kind, target in arrays:
        views.append({"buffer": 0, "byteOffset": len(binary), "byteLength": values.nbytes, "target": target})
        accessor = {"bufferView": len(views) - 1, "componentType": component, "count": len(values), "type": kind}
        if kind == "VEC3":  # glTF requires POSITION's bounds
            accessor["min"] = positions.min(axis=0).tolist() if len(positions) else [0.0] * 3
            accessor["max"] = positions.max(axis=0).tolist() if len(positions) else [0.0] * 3
        accessors.append(accessor)
        binary = _padded(binary + values.tobytes(), b"\0")
    attributes = {"POSITION": 0, **({"COLOR_0": 1} if colors is not None else {})}
    document = {"asset": {"version": "2.0", "generator": GENERATOR}, "scene": 0, "scenes": [{"nodes": [0]}],
                "nodes": [{"mesh": 0, "name": name}],
                "meshes": [{"name": name, "primitives": [{"attributes": attributes, "indices": len(accessors) - 1,
                                                          "mode": TRIANGLES}]}],
                "buffers": [{"byteLength": len(binary)}], "bufferViews": views, "accessors": accessors}
    text = _padded(json.dumps(document, separators=(",", ":")).encode(), b" ")
    total = 12 + 8 + len(text) + 8 + len(binary)
    return (struct.pack("<III", GLB_MAGIC, GLB_VERSION, total) + struct.pack("<II", len(text), CHUNK_JSON) + text
            + struct.pack("<II", len(binary), CHUNK_BIN) + binary)
