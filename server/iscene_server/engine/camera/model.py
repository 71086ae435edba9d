"""A pinhole or orthographic camera from the scene frame S (z up) to pixels of the input image.

Convention (OpenCV): camera coordinates ``c = R p + t`` with x right, y down, z forward (depth); pixels
``u = f c_x / c_z + cx``, ``v = f c_y / c_z + cy`` (perspective) or ``u = s c_x + cx``, ``v = s c_y + cy``
(orthographic, ``s`` pixels per scene unit). Pixel (0, 0) is the top-left corner of the top-left pixel of the
full input image (not of the crop); ``(u, v) = (0.5, 0.5)`` is that pixel's centre.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

PERSPECTIVE, ORTHOGRAPHIC = "perspective", "orthographic"
BLENDER_SENSOR_WIDTH = 36.0  # mm


def axis_aligned_rotations() -> np.ndarray:
    """The 24 proper rotations that map coordinate axes onto coordinate axes, ``[24, 3, 3]``."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.isclose(np.linalg.det(m), 1.0):
                out.append(m)
    return np.stack(out)


@dataclass
class Camera:
    kind: str  # PERSPECTIVE or ORTHOGRAPHIC
    rotation: np.ndarray  # [3, 3], S -> camera
    translation: np.ndarray  # [3]
    focal: float  # pixels (perspective) or pixels per scene unit (orthographic)
    principal: tuple[float, float]  # (cx, cy) in image pixels
    image_size: tuple[int, int]  # (width, height)

    def __post_init__(self):
        if self.kind not in (PERSPECTIVE, ORTHOGRAPHIC):
            raise ValueError(f"unknown camera kind {self.kind!r}")
        self.rotation = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)
        self.translation = np.asarray(self.translation, dtype=np.float64).reshape(3)
        self.focal = float(self.focal)
        self.principal = (float(self.principal[0]), float(self.principal[1]))
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    @property
    def perspective(self) -> bool:
        return self.kind == PERSPECTIVE

    @property
    def position(self) -> np.ndarray:
        """The camera centre in S (for orthographic cameras: a point on the view axis, in front of the scene)."""
        return -self.rotation.T @ self.translation

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) @ self.rotation.T + self.translation

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates ``[N, 2]`` and depths ``[N]`` of scene-frame points ``[N, 3]``."""
        c = self.to_camera(points)
        depth = c[:, 2]
        if self.perspective:
            xy = c[:, :2] / np.where(np.abs(depth) < 1e-9, 1e-9, depth)[:, None]
        else:
            xy = c[:, :2]
        return xy * self.focal + np.array(self.principal), depth

    # --- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        w, h = self.image_size
        return {
            "model": self.kind,
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
            "position": self.position.round(9).tolist(),
            "focal_px": self.focal if self.kind == PERSPECTIVE else None,
            "ortho_px_per_unit": self.focal if self.kind == ORTHOGRAPHIC else None,
            "principal_px": list(self.principal),
            "image_size": [w, h],
            "convention": "OpenCV: c = R p + t, x right, y down, z forward; pixels from the image's top-left",
            "blender": self.blender(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Camera:
        focal = data["focal_px"] if data["model"] == PERSPECTIVE else data["ortho_px_per_unit"]
        return cls(data["model"], data["rotation"], data["translation"], focal, tuple(data["principal_px"]),
                   tuple(data["image_size"]))

    def _clip_range(self) -> dict:
        """Blender clip distances around the depths of S's cube corners."""
        corners = np.array(list(itertools.product((-0.5, 0.5), repeat=3)))
        depth = self.to_camera(corners)[:, 2]
        return {"clip_start": float(max(0.5 * depth.min(), 1e-3)), "clip_end": float(max(2.0 * depth.max(), 1.0))}

    def blender(self) -> dict:
        """Blender camera settings that reproduce this camera in S (``matrix_world`` columns: camera x, y, z).

        Shifts are in units of the larger image side (Blender's convention for the sensor fit chosen here). The
        clip distances keep the whole unit cube of S in view; like the location they are in S units, so multiply
        them by the scale of the object that maps S to the world.
        """
        w, h = self.image_size
        # Blender cameras look down their -Z with +Y up: flip the OpenCV y and z axes.
        cam_to_world = self.rotation.T @ np.diag([1.0, -1.0, -1.0])
        larger = max(w, h)
        settings = {
            "type": "PERSP" if self.kind == PERSPECTIVE else "ORTHO",
            "location": self.position.round(9).tolist(),
            "rotation_matrix": cam_to_world.round(9).tolist(),
            "sensor_fit": "HORIZONTAL" if w >= h else "VERTICAL",
            "sensor_width": BLENDER_SENSOR_WIDTH,
            "sensor_height": BLENDER_SENSOR_WIDTH,
            "shift_x": (w / 2 - self.principal[0]) / larger,
            "shift_y": (self.principal[1] - h / 2) / larger,
            "resolution": [w, h],
            **self._clip_range(),
        }
        if self.kind == PERSPECTIVE:
            settings["lens"] = self.focal * BLENDER_SENSOR_WIDTH / larger
        else:
            settings["ortho_scale"] = larger / self.focal
        return settings
