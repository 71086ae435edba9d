"""TRELLIS structured-latent flow (``slat_flow_img_dit_L_64l8p2_fp16``), spec §3.3.

Predicts the velocity of the 8-channel latent on every occupied voxel of the 64^3 structure: sparse
residual blocks at 64^3, pooling to 32^3, a DiT with full per-object attention, and back up with skips.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .condition import ConditionRows
from .embeddings import TimestepEmbedder, sincos_position_embedding
from .norms import LayerNorm32
from .precision import TorsoPrecision
from .sparse import SparseConv3d, SparseDownsample, SparseTensor, SparseUpsample
from .sparse_transformer import ModulatedSparseTransformerCrossBlock, TokenBatch


class SparseResBlock3d(nn.Module):
    """Optional down/upsampling, then norm-SiLU-conv, scale/shift from the time embedding, SiLU-conv, skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 downsample: bool = False, upsample: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(out_channels, elementwise_affine=False, eps=1e-6)
        self.conv1 = SparseConv3d(channels, out_channels, 3)
        self.conv2 = SparseConv3d(out_channels, out_channels, 3)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.skip_connection = nn.Linear(channels, out_channels) if channels != out_channels else nn.Identity()
        self.updown = SparseDownsample(2) if downsample else SparseUpsample(2) if upsample else None

    def forward(self, x: SparseTensor, emb: torch.Tensor) -> SparseTensor:
        scale, shift = self.emb_layers(emb).type(x.dtype).chunk(2, dim=1)  # scale first
        if self.updown is not None:
            x = self.updown(x)
        h = self.conv1(x.replace(F.silu(self.norm1(x.feats))))
        h = h.replace(self.norm2(h.feats)) * (1 + scale) + shift
        h = self.conv2(h.replace(F.silu(h.feats)))
        return h.replace(h.feats + self.skip_connection(x.feats))


class SLatFlowModel(TorsoPrecision, nn.Module):
    def __init__(self, resolution: int, in_channels: int, model_channels: int, cond_channels: int,
                 out_channels: int, num_blocks: int, num_heads: int | None = None, num_head_channels: int = 64,
                 mlp_ratio: float = 4, patch_size: int = 2, num_io_res_blocks: int = 2,
                 io_block_channels: list[int] | None = None, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, use_skip_connection: bool = True, share_mod: bool = False,
                 qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False):
        super().__init__()
        if pe_mode != "ape" or share_mod or not use_skip_connection:
            raise ValueError("only pe_mode='ape', share_mod=False, use_skip_connection=True (as released)")
        if not io_block_channels or len(io_block_channels) != 1 or patch_size != 2:
            # The reference itself is only correct with one io stage (its downsample caches collide).
            raise ValueError("only patch_size=2 with one io_block_channels entry (as released) is supported")
        self.resolution = resolution
        self.model_channels = model_channels
        self.use_fp16 = use_fp16
        num_heads = num_heads or model_channels // num_head_channels
        io = io_block_channels[0]
        self.t_embedder = TimestepEmbedder(model_channels)
        self.input_layer = nn.Linear(in_channels, io)
        self.input_blocks = nn.ModuleList(
            [SparseResBlock3d(io, model_channels, io) for _ in range(num_io_res_blocks - 1)]
            + [SparseResBlock3d(io, model_channels, model_channels, downsample=True)])
        self.blocks = nn.ModuleList(
            ModulatedSparseTransformerCrossBlock(model_channels, cond_channels, num_heads, mlp_ratio, False,
                                                 qk_rms_norm, qk_rms_norm_cross)
            for _ in range(num_blocks))
        self.out_blocks = nn.ModuleList(
            [SparseResBlock3d(model_channels * 2, model_channels, io, upsample=True)]
            + [SparseResBlock3d(io * 2, model_channels, io) for _ in range(num_io_res_blocks - 1)])
        self.out_layer = nn.Linear(io, out_channels)

    def torso_modules(self) -> list[nn.Module]:
        return [self.input_blocks, self.blocks, self.out_blocks]

    def paired(self, x: SparseTensor, t: torch.Tensor, cond: torch.Tensor | ConditionRows,
               neg_cond: torch.Tensor | ConditionRows) -> tuple[SparseTensor, SparseTensor]:
        """The velocities for ``cond`` and for ``neg_cond`` from one call on the batch repeated twice."""
        v = self(x.repeat_batch(2), torch.cat([t, t]), ConditionRows.stack(cond, neg_cond))
        conditional, unconditional = v.feats.chunk(2)
        return x.replace(conditional), x.replace(unconditional)

    def forward(self, x: SparseTensor, t: torch.Tensor, cond: torch.Tensor | ConditionRows) -> SparseTensor:
        """``x`` latents on the 64^3 voxels of each item, ``t [B]`` (x1000), ``cond [B, T, C]``."""
        dtype = self.torso_dtype
        h = x.replace(self.input_layer(x.feats).type(dtype))
        emb = self.t_embedder(t).type(dtype)
        cond = cond.type(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h.feats)
        h = h + sincos_position_embedding(h.coords[:, 1:], self.model_channels).type(dtype)
        tokens, feats = TokenBatch.of(h), h.feats
        for block in self.blocks:
            feats = block(feats, emb, cond, tokens)
        h = h.replace(feats)
        for block, skip in zip(self.out_blocks, reversed(skips), strict=True):
            h = block(h.replace(torch.cat([h.feats, skip], dim=1)), emb)
        feats = F.layer_norm(h.feats, h.feats.shape[-1:])
        return h.replace(self.out_layer(feats.type(x.dtype)))
