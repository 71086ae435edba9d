"""Geometry after the networks: FlexiCubes mesh extraction, mesh post-processing, GLB/PLY export."""
