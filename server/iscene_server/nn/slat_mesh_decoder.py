"""TRELLIS SLat mesh decoder (``slat_dec_mesh_swin8_B_64l8m256c_fp16``), spec §3.5.

Swin transformer on the 64^3 latent voxels, two subdivision blocks to 256^3, and a linear head with, per
voxel, 8 corner SDFs, 8 corner deformations, 21 FlexiCubes weights and 8 corner colours (101 channels).
Turning that into a mesh is :mod:`iscene_server.geometry.flexicubes`' job.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn as nn
import torch.nn.functional as F

from .sparse import SparseConv3d, SparseGroupNorm32, SparseSubdivide, SparseTensor
from .sparse_transformer import SparseTransformerBase

MESH_CHANNELS = {"sdf": (0, 8), "deform": (8, 32), "weights": (32, 53), "color": (53, 101)}


class SparseSiLU(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(F.silu(x.feats))


class SparseSubdivideBlock3d(nn.Module):
    """GroupNorm-SiLU, subdivide (x2 resolution), conv-GroupNorm-SiLU-conv, plus a 1x1x1-conv skip."""

    def __init__(self, channels: int, resolution: int, out_channels: int | None = None, num_groups: int = 32):
        super().__init__()
        out_channels = out_channels or channels
        self.act_layers = nn.Sequential(SparseGroupNorm32(num_groups, channels), SparseSiLU())
        self.sub = SparseSubdivide()
        self.out_layers = nn.Sequential(SparseConv3d(channels, out_channels, 3),
                                        SparseGroupNorm32(num_groups, out_channels), SparseSiLU(),
                                        SparseConv3d(out_channels, out_channels, 3))
        self.skip_connection = SparseConv3d(channels, out_channels, 1) if out_channels != channels else nn.Identity()

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = self.out_layers(self.sub(self.act_layers(x)))
        skip = self.skip_connection(self.sub(x))
        return h.replace(h.feats + skip.feats)


class SLatMeshDecoder(SparseTransformerBase):
    def __init__(self, resolution: int, model_channels: int, latent_channels: int, num_blocks: int,
                 representation_config: Mapping | None = None, **trunk_args):
        """``trunk_args``: the remaining reference arguments, see :class:`SparseTransformerBase`."""
        super().__init__(latent_channels, model_channels, num_blocks, **trunk_args)
        if not (representation_config or {}).get("use_color", False):
            raise ValueError("only the coloured mesh head (representation_config.use_color = true) is supported")
        self.resolution = resolution
        self.upsample = nn.ModuleList([
            SparseSubdivideBlock3d(model_channels, resolution, model_channels // 4),
            SparseSubdivideBlock3d(model_channels // 4, resolution * 2, model_channels // 8),
        ])
        self.out_layer = nn.Linear(model_channels // 8, MESH_CHANNELS["color"][1])

    @property
    def head_resolution(self) -> int:
        """Grid resolution of the head output's coordinates (4x the latent grid)."""
        return self.resolution * 4

    def torso_modules(self) -> list[nn.Module]:
        return [self.blocks, self.upsample]

    def forward(self, x: SparseTensor) -> SparseTensor:
        """Latents on 64^3 voxels -> the 101-channel head on their 256^3 subdivisions (subdivision order)."""
        h = self.trunk(x)
        for block in self.upsample:
            h = block(h)
        return h.replace(self.out_layer(h.feats.type(x.dtype)))
