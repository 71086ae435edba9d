"""FlexiCubes mesh extraction (TRELLIS / I-Scene semantics) with memory proportional to the voxel count."""

from .extract import ExtractedMesh, extract_mesh

__all__ = ["ExtractedMesh", "extract_mesh"]
