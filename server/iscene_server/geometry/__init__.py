"""Geometry after (and between) the networks, no engine knowledge: FlexiCubes mesh extraction, mesh post-processing,
the voxel grid of S and edits of it, rasterisers, and file export (GLB writer/reader, 3DGS PLY)."""
