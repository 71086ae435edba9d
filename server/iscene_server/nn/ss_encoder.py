"""TRELLIS sparse-structure VAE encoder (``ss_enc_conv3d_16l8_fp16``): 64^3 occupancy -> 16^3 x 8 latent.

Not used for plain generation; refine encodes the artist's edited occupancy with it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .conv3d_blocks import DownsampleBlock3d, output_head, res_stack, staged_blocks
from .precision import TorsoPrecision


class SparseStructureEncoder(TorsoPrecision, nn.Module):
    def __init__(self, in_channels: int, latent_channels: int, num_res_blocks: int, channels: list[int],
                 num_res_blocks_middle: int = 2, norm_type: str = "layer", use_fp16: bool = False):
        super().__init__()
        self.use_fp16 = use_fp16
        self.input_layer = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        self.blocks = staged_blocks(channels, num_res_blocks, norm_type, DownsampleBlock3d)
        self.middle_block = res_stack(channels[-1], num_res_blocks_middle, norm_type)
        self.out_layer = output_head(norm_type, channels[-1], latent_channels * 2)

    def torso_modules(self) -> list[nn.Module]:
        return [self.blocks, self.middle_block]

    def forward(self, x: torch.Tensor, sample_posterior: bool = False, return_raw: bool = False,
                generator: torch.Generator | None = None):
        """Posterior mean (or a sample of it) of occupancy ``x [B, 1, X, Y, Z]``.

        With ``return_raw`` the result is ``(z, mean, logvar)``.
        """
        h = self.input_layer(x).type(self.torso_dtype)
        for block in self.blocks:
            h = block(h)
        h = self.middle_block(h)
        mean, logvar = self.out_layer(h.type(x.dtype)).chunk(2, dim=1)
        z = mean
        if sample_posterior:
            std = torch.exp(0.5 * logvar)
            z = mean + std * torch.randn(std.shape, generator=generator, device=std.device, dtype=std.dtype)
        return (z, mean, logvar) if return_raw else z
