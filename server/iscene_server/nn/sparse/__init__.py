"""Sparse voxel tensors and the operations the stage-2 networks need, in pure PyTorch.

Replaces spconv (submanifold convolution), flash-attn/xformers varlen attention and TRELLIS' sparse
helpers. Everything that depends only on the voxel coordinates (neighbour maps, window partitions,
down/up-sampling maps, batch segments) is computed once per coordinate set and kept in the tensor's
:class:`CoordinateCache`, which every tensor derived from the same coordinates shares — across the blocks of
a network and across the steps of a sampler.
"""

from .attention import Segments, segmented_attention, segmented_cross_attention
from .conv import SparseConv3d
from .norm import SparseGroupNorm32
from .resample import SparseDownsample, SparseSubdivide, SparseUpsample
from .tensor import CoordinateCache, SparseTensor

__all__ = ["CoordinateCache", "Segments", "SparseConv3d", "SparseDownsample", "SparseGroupNorm32",
           "SparseSubdivide", "SparseTensor", "SparseUpsample", "segmented_attention",
           "segmented_cross_attention"]
