"""Transformer blocks over sparse voxel tokens (SLat flow and the SLat decoders).

Tokens are the rows of a :class:`SparseTensor`'s features. Attention runs within segments: the voxels of a
batch item (full attention, SLat flow) or of a window (shifted-window attention, decoders, spec §2.10).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .embeddings import sincos_position_embedding
from .norms import LayerNorm32
from .precision import TorsoPrecision
from .sparse import Segments, SparseTensor, segmented_attention, segmented_cross_attention
from .transformer import FeedForwardNet, ModulatedTransformerCrossBlock, MultiHeadAttention


@dataclass(frozen=True)
class TokenBatch:
    """Which batch item every token belongs to, and the per-item segments."""

    batch_index: torch.Tensor
    items: Segments

    @classmethod
    def of(cls, x: SparseTensor) -> "TokenBatch":
        return x.cache.get_or_build("token_batch", lambda: cls(x.batch_index(), Segments(x.batch_lengths())))


def window_segments(x: SparseTensor, window: int, shift: int) -> Segments:
    """Tokens grouped by window ``(b, floor((xyz + shift) / window))``, cached per coordinate set."""

    def build() -> Segments:
        cells = torch.div(x.coords[:, 1:].long() + shift, window, rounding_mode="floor")
        span = int(cells.max()) + 1 if cells.numel() else 1
        keys = ((x.coords[:, 0].long() * span + cells[:, 0]) * span + cells[:, 1]) * span + cells[:, 2]
        sorted_keys, order = torch.sort(keys, stable=True)
        _, lengths = torch.unique_consecutive(sorted_keys, return_counts=True)
        return Segments(lengths.tolist(), order)

    return x.cache.get_or_build(("windows", window, shift), build)


class ModulatedSparseTransformerCrossBlock(ModulatedTransformerCrossBlock):
    """The TRELLIS adaLN cross block on sparse tokens: full self-attention within each batch item,
    cross-attention of each item's tokens to that item's condition tokens."""

    def broadcast(self, mod: torch.Tensor, layout: TokenBatch) -> torch.Tensor:
        return mod[layout.batch_index]

    def attend_self(self, h: torch.Tensor, layout: TokenBatch) -> torch.Tensor:
        q, k, v = self.self_attn.project_qkv(h)
        return self.self_attn.project_out(segmented_attention(q, k, v, layout.items))

    def attend_context(self, h: torch.Tensor, context: torch.Tensor, layout: TokenBatch) -> torch.Tensor:
        q, k, v = self.cross_attn.project_qkv(h, context)
        return self.cross_attn.project_out(segmented_cross_attention(q, k, v, layout.items))


class SparseTransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP block (no modulation) with shifted-window attention."""

    def __init__(self, channels: int, num_heads: int, mlp_ratio: float, window_size: int, shift: int,
                 qk_rms_norm: bool = False):
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.attn = MultiHeadAttention(channels, num_heads, type="self", qk_rms_norm=qk_rms_norm)
        self.mlp = FeedForwardNet(channels, mlp_ratio)

    def forward(self, x: SparseTensor) -> SparseTensor:
        segments = window_segments(x, self.window_size, self.shift)
        q, k, v = self.attn.project_qkv(self.norm1(x.feats))
        feats = x.feats + self.attn.project_out(segmented_attention(q, k, v, segments))
        return x.replace(feats + self.mlp(self.norm2(feats)))


class SparseTransformerBase(TorsoPrecision, nn.Module):
    """Decoder trunk: linear input + absolute position embedding, then swin blocks (every other block
    shifted by half a window)."""

    def __init__(self, in_channels: int, model_channels: int, num_blocks: int, num_heads: int | None = None,
                 num_head_channels: int = 64, mlp_ratio: float = 4.0, attn_mode: str = "swin",
                 window_size: int = 8, pe_mode: str = "ape", use_fp16: bool = False, use_checkpoint: bool = False,
                 qk_rms_norm: bool = False):
        super().__init__()
        if attn_mode != "swin" or pe_mode != "ape":
            raise ValueError("only attn_mode='swin' with pe_mode='ape' (the released decoders) is supported")
        self.model_channels = model_channels
        self.use_fp16 = use_fp16
        num_heads = num_heads or model_channels // num_head_channels
        self.input_layer = nn.Linear(in_channels, model_channels)
        self.blocks = nn.ModuleList(
            SparseTransformerBlock(model_channels, num_heads, mlp_ratio, window_size, window_size // 2 * (i % 2),
                                   qk_rms_norm)
            for i in range(num_blocks))

    def torso_modules(self) -> list[nn.Module]:
        return [self.blocks]

    def trunk(self, x: SparseTensor) -> SparseTensor:
        feats = self.input_layer(x.feats) + sincos_position_embedding(x.coords[:, 1:], self.model_channels)
        h = x.replace(feats.type(self.torso_dtype))
        for block in self.blocks:
            h = block(h)
        return h
