"""Dense 3D convolution blocks of the sparse-structure VAE (encoder and decoder)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .norms import ChannelLayerNorm32


def norm_layer(norm_type: str, channels: int) -> nn.Module:
    if norm_type == "layer":
        return ChannelLayerNorm32(channels)
    if norm_type == "group":
        return GroupNorm32(32, channels)
    raise ValueError(f"unknown norm_type {norm_type!r} (expected 'layer' or 'group')")


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def pixel_shuffle_3d(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``[B, C s^3, X, Y, Z] -> [B, C, sX, sY, sZ]``; channel ``c s^3 + i s^2 + j s + k`` -> voxel offset (i, j, k)."""
    b, c, *size = x.shape
    x = x.reshape(b, c // scale ** 3, scale, scale, scale, *size)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c // scale ** 3, *(s * scale for s in size))


class ResBlock3d(nn.Module):
    """norm -> SiLU -> conv -> norm -> SiLU -> conv, plus a (1x1x1 conv when widths differ) skip."""

    def __init__(self, channels: int, out_channels: int | None = None, norm_type: str = "layer"):
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = norm_layer(norm_type, channels)
        self.norm2 = norm_layer(norm_type, out_channels)
        self.conv1 = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip_connection = nn.Conv3d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class UpsampleBlock3d(nn.Module):
    """Conv to 8x the output width, then 3D pixel shuffle (x2 resolution)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_3d(self.conv(x), 2)


class DownsampleBlock3d(nn.Module):
    """Kernel-2, stride-2 conv (x1/2 resolution)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def staged_blocks(channels: list[int], num_res_blocks: int, norm_type: str,
                  transition: type[nn.Module]) -> nn.ModuleList:
    """Per stage ``num_res_blocks`` residual blocks, with a ``transition(ch, next_ch)`` block between stages."""
    blocks: list[nn.Module] = []
    for i, ch in enumerate(channels):
        blocks += [ResBlock3d(ch, norm_type=norm_type) for _ in range(num_res_blocks)]
        if i + 1 < len(channels):
            blocks.append(transition(ch, channels[i + 1]))
    return nn.ModuleList(blocks)


def res_stack(channels: int, count: int, norm_type: str) -> nn.Sequential:
    return nn.Sequential(*(ResBlock3d(channels, norm_type=norm_type) for _ in range(count)))


def output_head(norm_type: str, channels: int, out_channels: int) -> nn.Sequential:
    """norm -> SiLU -> 3^3 conv (keys ``0`` and ``2``)."""
    return nn.Sequential(norm_layer(norm_type, channels), nn.SiLU(), nn.Conv3d(channels, out_channels, 3, padding=1))
