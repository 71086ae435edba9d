"""Refine: re-generating a finished scene coherently with the artist's edits (:mod:`.scene`); the voxel and
raster geometry it uses lives in ``geometry/`` (``voxels``, ``affine``, ``raster``)."""
