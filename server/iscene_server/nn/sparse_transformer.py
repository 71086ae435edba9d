"""Transformer blocks over sparse voxel tokens (SLat flow and the SLat decoders).

Tokens are the rows of a :class:`SparseTensor`'s features. Attention runs within segments: the voxels of a
batch item (full attention, SLat flow) or of a window (shifted-window attention, decoders, spec §2.10).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .compile import UsesFusedFunctions
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
    _heads: dict[int, tuple[int, TokenBatch]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, x: SparseTensor) -> TokenBatch:
        return x.cache.get_or_build("token_batch", lambda: cls(x.batch_index(), Segments(x.batch_lengths())))

    def head(self, items: int) -> tuple[int, TokenBatch]:
        """The number of rows of the first ``items`` batch items (they lead: rows are in batch order), and
        their token batch; no host sync (the lengths are host-side)."""
        if items not in self._heads:
            rows = sum(self.items.lengths[:items])
            self._heads[items] = rows, TokenBatch(self.batch_index[:rows], self.items.head(items))
        return self._heads[items]


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

    def modulation_rows(self, mod: torch.Tensor, layout: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return mod, layout.batch_index

    def conditioned_rows(self, samples: int, layout: TokenBatch) -> tuple[int, TokenBatch]:
        return layout.head(samples)

    def attend_self(self, h: torch.Tensor, layout: TokenBatch) -> torch.Tensor:
        q, k, v = self.self_attn.project_qkv(h)
        return self.self_attn.project_out(segmented_attention(q, k, v, layout.items))

    def attend_context(self, h: torch.Tensor, context: torch.Tensor, layout: TokenBatch) -> torch.Tensor:
        q, k, v = self.cross_attn.project_qkv(h, context)
        return self.cross_attn.project_out(segmented_cross_attention(q, k, v, layout.items))


class SparseTransformerBlock(UsesFusedFunctions, nn.Module):
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
        fused = self.fused
        q, k, v = self.attn.project_qkv(fused.modulated_norm(x.feats, None, None, None, self.norm1.eps))
        attended = self.attn.project_out(segmented_attention(q, k, v, segments))
        feats, h = fused.gated_residual_norm(x.feats, attended, None, None, None, None, self.norm2.eps)
        return x.replace(fused.gated_feed_forward(feats, h, None, None, *self.mlp.weights()))


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
