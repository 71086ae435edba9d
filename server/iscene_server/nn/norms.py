"""Normalisation layers that always compute in float32, whatever dtype flows through the torso."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .compile import UsesFusedFunctions


class LayerNorm32(nn.LayerNorm):
    """LayerNorm over the last axis, computed in float32 and cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class ChannelLayerNorm32(LayerNorm32):
    """LayerNorm over the channel axis (dim 1) of an ``[N, C, ...]`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.movedim(1, -1).contiguous()
        return super().forward(channels_last).movedim(-1, 1).contiguous()


class MultiHeadRMSNorm(UsesFusedFunctions, nn.Module):
    """Per-head RMS normalisation of queries/keys: ``x / ||x|| * gamma[h] * sqrt(dim)`` in float32."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.head_rms_norm(x, self.gamma, self.scale)


def head_layer_norm(x: torch.Tensor) -> torch.Tensor:
    """The non-affine LayerNorm (eps 1e-5) the flow models apply before their output layer."""
    return F.layer_norm(x, x.shape[-1:])
