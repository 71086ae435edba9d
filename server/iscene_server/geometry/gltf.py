"""The glTF 2.0 facts the GLB writer and reader share: container constants, enums and the scene-frame mapping.

glTF is y-up, so scene-frame points map as (x, y, z)_S ↦ (x, z, −y) (DESIGN.md §5); Blender's importer maps
them back to z-up, so an imported object's vertices equal the S coordinates.
"""

from __future__ import annotations

import numpy as np

FLOAT, UINT32 = 5126, 5125  # accessor component types
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963  # buffer view targets
TRIANGLES = 4  # primitive mode
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071  # sampler filters and wrap mode
PNG = "image/png"
GLB_MAGIC, GLB_VERSION = 0x46546C67, 2
CHUNK_JSON, CHUNK_BIN = 0x4E4F534A, 0x004E4942
GLB_HEADER = "<III"  # magic, version, total length
CHUNK_HEADER = "<II"  # chunk length, chunk type

S_TO_GLTF = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float64)
"""(x, y, z)_S -> (x, z, -y): the y-up glTF frame; row vectors map by ``p @ S_TO_GLTF.T``."""


def instance_name(label: int) -> str:
    """Node / object / file stem of one instance."""
    return f"instance_{int(label)}"
