"""TRELLIS sparse-structure VAE decoder (``ss_dec_conv3d_16l8_fp16``), spec §3.1: latent 16^3 x 8 -> 64^3 logits."""

from __future__ import annotations

import torch
import torch.nn as nn

from .conv3d_blocks import UpsampleBlock3d, output_head, res_stack, staged_blocks
from .precision import TorsoPrecision


class SparseStructureDecoder(TorsoPrecision, nn.Module):
    def __init__(self, out_channels: int, latent_channels: int, num_res_blocks: int, channels: list[int],
                 num_res_blocks_middle: int = 2, norm_type: str = "layer", use_fp16: bool = False):
        super().__init__()
        self.use_fp16 = use_fp16
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = res_stack(channels[0], num_res_blocks_middle, norm_type)
        self.blocks = staged_blocks(channels, num_res_blocks, norm_type, UpsampleBlock3d)
        self.out_layer = output_head(norm_type, channels[-1], out_channels)

    def torso_modules(self) -> list[nn.Module]:
        return [self.middle_block, self.blocks]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(z).type(self.torso_dtype)
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h.type(z.dtype))


def occupied_coords(logits: torch.Tensor) -> torch.Tensor:
    """Occupied voxels of decoder logits ``[B, 1, X, Y, Z]`` as int32 ``[N, 4]`` = (batch, x, y, z), sorted."""
    return torch.argwhere(logits > 0)[:, [0, 2, 3, 4]].int()
