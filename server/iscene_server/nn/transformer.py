"""Dense transformer parts shared by the flow models: MLP, multi-head attention, the adaLN cross block."""

from __future__ import annotations

import torch
import torch.nn as nn

from .attention import attention
from .compile import UsesFusedFunctions
from .condition import ConditionRows
from .norms import LayerNorm32, MultiHeadRMSNorm


class FeedForwardNet(nn.Module):
    """Linear -> tanh-GELU -> Linear (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(w1, b1, w2, b2)`` for :func:`~.compile.gated_feed_forward`."""
        first, _, second = self.mlp
        return first.weight, first.bias, second.weight, second.bias


class MultiHeadAttention(nn.Module):
    """Self-attention (``to_qkv``, optional q/k RMS norm) or cross-attention (``to_q`` + ``to_kv``)."""

    def __init__(self, channels: int, num_heads: int, ctx_channels: int | None = None,
                 type: str = "self", qk_rms_norm: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.is_self = type == "self"
        self.qk_rms_norm = qk_rms_norm
        if self.is_self:
            self.to_qkv = nn.Linear(channels, channels * 3)
        else:
            self.to_q = nn.Linear(channels, channels)
            self.to_kv = nn.Linear(ctx_channels or channels, channels * 2)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def _heads(self, t: torch.Tensor, fused: int) -> tuple[torch.Tensor, ...]:
        return t.reshape(*t.shape[:-1], fused, self.num_heads, self.head_dim).unbind(-3)

    def project_qkv(self, x: torch.Tensor, context: torch.Tensor | None = None):
        """Queries, keys and values ``[..., L, H, D]`` (after the optional RMS norm).

        Works for dense ``[B, L, C]`` tokens and for sparse ``[N, C]`` rows alike.
        """
        if self.is_self:
            q, k, v = self._heads(self.to_qkv(x), 3)
        else:
            (q,) = self._heads(self.to_q(x), 1)
            k, v = self._heads(self.to_kv(context), 2)
        if self.qk_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        return q, k, v

    def project_out(self, h: torch.Tensor) -> torch.Tensor:
        return self.to_out(h.reshape(*h.shape[:-2], self.channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.project_out(attention(*self.project_qkv(x, context)))

    def null_output(self) -> torch.Tensor:
        """Cross-attention to an all-zero context, for every query: ``[C]``.

        Every key is ``to_k(0) = b_k`` (RMS-normed or not, all equal), so the attention is uniform over
        values that are all ``b_v``, and the output is ``to_out(b_v)``.
        """
        return self.to_out(self.to_kv.bias[self.channels:])


class ModulatedTransformerCrossBlock(UsesFusedFunctions, nn.Module):
    """adaLN-modulated self-attention, unmodulated cross-attention, adaLN-modulated MLP.

    The elementwise work between the attention and MLP GEMMs goes through ``self.fused`` (see
    :mod:`.compile`). A :class:`ConditionRows` context skips the cross-attention of its all-zero rows.
    """

    def __init__(self, channels: int, ctx_channels: int, num_heads: int, mlp_ratio: float = 4.0,
                 share_mod: bool = False, qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False):
        super().__init__()
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = self.make_self_attention(channels, num_heads, qk_rms_norm)
        self.cross_attn = MultiHeadAttention(channels, num_heads, ctx_channels, type="cross",
                                             qk_rms_norm=qk_rms_norm_cross)
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))

    def make_self_attention(self, channels: int, num_heads: int, qk_rms_norm: bool) -> nn.Module:
        return MultiHeadAttention(channels, num_heads, type="self", qk_rms_norm=qk_rms_norm)

    def attend_self(self, h: torch.Tensor, layout=None) -> torch.Tensor:
        """Self-attention over each sequence; ``layout`` is for subclasses that relate sequences."""
        return self.self_attn(h)

    def attend_context(self, h: torch.Tensor, context: torch.Tensor, layout=None) -> torch.Tensor:
        return self.cross_attn(h, context)

    def modulation_rows(self, mod: torch.Tensor, layout=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample modulation ``[B, 6C]`` shaped to broadcast over each sample's tokens, and the row index
        that gathers it per token (None when it broadcasts as it is)."""
        return mod.unsqueeze(1), None

    def conditioned_rows(self, samples: int, layout=None) -> tuple[int, object]:
        """How many leading rows of ``h`` belong to the first ``samples`` samples, and their layout."""
        return samples, layout

    def attend_condition(self, h: torch.Tensor, context: torch.Tensor | ConditionRows, layout=None) -> torch.Tensor:
        """Cross-attention for every row; rows with the all-zero condition get the constant output."""
        if not isinstance(context, ConditionRows):
            return self.attend_context(h, context, layout)
        split, head = self.conditioned_rows(context.real_rows, layout)
        null = self.cross_attn.null_output().expand(h.shape[0] - split, *h.shape[1:])
        if split == 0:
            return null
        return torch.cat([self.attend_context(h[:split], context.tokens, head), null])

    def forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor | ConditionRows,
                layout=None) -> torch.Tensor:
        if not self.share_mod:
            mod = self.adaLN_modulation(mod)
        mod, rows = self.modulation_rows(mod, layout)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, -1)
        fused = self.fused
        h = fused.modulated_norm(x, shift_msa, scale_msa, rows, self.norm1.eps)
        x, h = fused.gated_residual_norm(x, self.attend_self(h, layout), gate_msa, rows, self.norm2.weight,
                                         self.norm2.bias, self.norm2.eps)
        x, h = fused.residual_modulated_norm(x, self.attend_condition(h, context, layout), shift_mlp, scale_mlp,
                                             rows, self.norm3.eps)
        return fused.gated_feed_forward(x, h, gate_mlp, rows, *self.mlp.weights())
