"""3D Gaussians in S, written as a standard 3DGS PLY.

Frame: TRELLIS ``save_ply`` convention, p ↦ T·p with T = [[1,0,0],[0,0,−1],[0,1,0]], i.e. (x, y, z)_S ↦
(x, −z, y) — a different frame from the GLB (z-up S becomes −y, as 3DGS viewers expect), and the Gaussians'
rotations are turned by the same T (trellis-spec §7).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_atomic
from .rotations import matrix_to_quaternion, quaternion_to_matrix

S_TO_PLY = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float64)
"""TRELLIS save_ply default transform: (x, y, z)_S -> (x, -z, y)."""

PLY_PROPERTIES = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                   "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class GaussianCloud:
    """Activated 3D Gaussians of one object in S, as numpy arrays: positions, SH degree-0 colour, opacity in
    (0, 1), per-axis scales (> 0) and unit rotation quaternions, real part first (w, x, y, z).

    (The decoder's own output, raw and activated tensors, is ``nn.slat_gs_decoder.GaussianParams``.)
    """

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


def gaussian_ply_records(gaussians: GaussianCloud, transform: np.ndarray | None = S_TO_PLY) -> np.ndarray:
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


def write_gaussian_ply(path: str | Path, gaussians: GaussianCloud,
                       transform: np.ndarray | None = S_TO_PLY) -> Path:
    """Write 3D Gaussians in the standard 3DGS PLY layout (binary little endian, float32 properties;
    opacity as logit, scales as log, rotation as unit wxyz), positions and rotations mapped by
    ``transform`` (TRELLIS' default; None keeps S)."""
    records = np.ascontiguousarray(gaussian_ply_records(gaussians, transform), dtype="<f4")
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {gaussians.count}",
                        *(f"property float {name}" for name in PLY_PROPERTIES), "end_header"]) + "\n"
    return write_atomic(path, header.encode("ascii") + records.tobytes())
