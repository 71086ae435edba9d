"""The camera that maps the scene frame S onto the input image: the model and its solver."""

from .model import ORTHOGRAPHIC, PERSPECTIVE, Camera, axis_aligned_rotations
from .solve import CameraFit, default_camera, default_orientation, solve_camera

__all__ = ["ORTHOGRAPHIC", "PERSPECTIVE", "Camera", "CameraFit", "axis_aligned_rotations", "default_camera",
           "default_orientation", "solve_camera"]
