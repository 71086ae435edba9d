"""Timestep and absolute sin-cos positional embeddings (TRELLIS conventions)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def timestep_frequencies(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """``[cos(t f), sin(t f)]`` with ``f_k = exp(-ln(max_period) k / (dim/2))``; ``t`` is ``[B]`` (already x1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Frequency features of the flow time followed by a two-layer SiLU MLP (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_frequencies(t, self.frequency_embedding_size))


def sincos_position_embedding(coords: torch.Tensor, channels: int) -> torch.Tensor:
    """Absolute sin-cos embedding of integer grid coordinates ``[N, D]`` -> ``[N, channels]``.

    Per axis ``[sin(c w), cos(c w)]`` with ``w_k = 1 / 10000^(k / F)``, ``F = channels // D // 2``; axes are
    concatenated in order and the remaining channels are zero.
    """
    n, dims = coords.shape
    freq_dim = channels // dims // 2
    freqs = torch.arange(freq_dim, dtype=torch.float32, device=coords.device) / freq_dim
    freqs = 1.0 / (10000 ** freqs)
    phases = torch.outer(coords.reshape(-1).float(), freqs)
    emb = torch.cat([torch.sin(phases), torch.cos(phases)], dim=-1).reshape(n, -1)
    if emb.shape[1] < channels:
        emb = torch.cat([emb, emb.new_zeros(n, channels - emb.shape[1])], dim=-1)
    return emb


def grid_coordinates(resolution: int, dims: int = 3, device=None) -> torch.Tensor:
    """All integer coordinates of a ``resolution^dims`` grid in row-major (``indexing='ij'``) order."""
    axes = [torch.arange(resolution, device=device)] * dims
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, dims)
