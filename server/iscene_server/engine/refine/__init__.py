"""Refine geometry: moving instances' stage-1 occupancy by the artist's edits and re-rendering the edited layout."""

from .raster import Rendering, RenderMesh, render_instances, transform_mesh
from .voxels import TransformResult, check_matrix, occupancy_grid, transform_voxels, union

__all__ = ["RenderMesh", "Rendering", "TransformResult", "check_matrix", "occupancy_grid", "render_instances",
           "transform_mesh", "transform_voxels", "union"]
