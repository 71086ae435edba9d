"""TRELLIS sparse-structure flow transformer (``ss_flow_img_dit_L_16l8_fp16``), spec §3.2.

Predicts the flow velocity of the 16^3 x 8 occupancy latent, conditioned on DINOv2 image tokens.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .condition import ConditionRows
from .embeddings import TimestepEmbedder, grid_coordinates, sincos_position_embedding
from .norms import head_layer_norm
from .precision import TorsoPrecision
from .transformer import ModulatedTransformerCrossBlock


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, X, Y, Z] -> [B, C p^3, X/p, Y/p, Z/p]``; channel ``c p^3 + (i p^2 + j p + k)``."""
    if p == 1:
        return x
    b, c, *size = x.shape
    x = x.reshape(b, c, size[0] // p, p, size[1] // p, p, size[2] // p, p)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * p ** 3, *(s // p for s in size))


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    if p == 1:
        return x
    b, cp, *size = x.shape
    x = x.reshape(b, cp // p ** 3, p, p, p, *size)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, cp // p ** 3, *(s * p for s in size))


class SparseStructureFlowModel(TorsoPrecision, nn.Module):
    """Dense DiT over the (resolution/patch)^3 latent grid with adaLN cross blocks."""

    def __init__(self, resolution: int, in_channels: int, model_channels: int, cond_channels: int,
                 out_channels: int, num_blocks: int, num_heads: int | None = None, num_head_channels: int = 64,
                 mlp_ratio: float = 4, patch_size: int = 2, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, share_mod: bool = False, qk_rms_norm: bool = False,
                 qk_rms_norm_cross: bool = False):
        super().__init__()
        if pe_mode != "ape":
            raise ValueError(f"pe_mode {pe_mode!r} is not supported (the released models use 'ape')")
        self.resolution = resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.patch_size = patch_size
        self.share_mod = share_mod
        self.use_fp16 = use_fp16
        num_heads = num_heads or model_channels // num_head_channels

        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels))
        grid = resolution // patch_size
        self.register_buffer("pos_emb", sincos_position_embedding(grid_coordinates(grid), model_channels))
        self.input_layer = nn.Linear(in_channels * patch_size ** 3, model_channels)
        self.blocks = nn.ModuleList(
            self.make_block(i, num_blocks, model_channels, cond_channels, num_heads, mlp_ratio, share_mod,
                            qk_rms_norm, qk_rms_norm_cross)
            for i in range(num_blocks)
        )
        self.out_layer = nn.Linear(model_channels, out_channels * patch_size ** 3)

    def make_block(self, index: int, num_blocks: int, channels: int, cond_channels: int, num_heads: int,
                   mlp_ratio: float, share_mod: bool, qk_rms_norm: bool, qk_rms_norm_cross: bool) -> nn.Module:
        return ModulatedTransformerCrossBlock(channels, cond_channels, num_heads, mlp_ratio, share_mod,
                                              qk_rms_norm, qk_rms_norm_cross)

    def torso_modules(self) -> list[nn.Module]:
        return [self.blocks]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | ConditionRows) -> torch.Tensor:
        """``x [B, C, r, r, r]``, ``t [B]`` (x1000), ``cond [B, T, C_cond]`` -> velocity like ``x``."""
        return self.run(x, t, cond)

    def paired(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | ConditionRows,
               neg_cond: torch.Tensor | ConditionRows) -> tuple[torch.Tensor, torch.Tensor]:
        """The velocities for ``cond`` and for ``neg_cond`` from one call on the batch repeated twice."""
        return self(torch.cat([x, x]), torch.cat([t, t]), ConditionRows.stack(cond, neg_cond)).chunk(2)

    def run(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | ConditionRows, layout=None) -> torch.Tensor:
        """The forward pass; ``layout`` is handed to every block (scene-context models use it)."""
        h = patchify(x, self.patch_size)
        h = h.reshape(*h.shape[:2], -1).transpose(1, 2)
        h = self.input_layer(h) + self.pos_emb[None]
        mod = self.t_embedder(t)
        if self.share_mod:
            mod = self.adaLN_modulation(mod)
        mod, h, cond = (v.type(self.torso_dtype) for v in (mod, h, cond))
        for block in self.blocks:
            h = block(h, mod, cond, layout)
        h = self.out_layer(head_layer_norm(h.type(x.dtype)))
        grid = self.resolution // self.patch_size
        h = h.transpose(1, 2).reshape(h.shape[0], h.shape[2], grid, grid, grid)
        return unpatchify(h, self.patch_size)
