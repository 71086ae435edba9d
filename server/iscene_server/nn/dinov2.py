"""DINOv2 vision transformer with register tokens (``dinov2_vitl14_reg``), spec §3.6.

Only what the image condition needs: the tokens before the final norm (``x_prenorm``) for a 518x518
input, i.e. ``[cls, 4 registers, 37x37 patches]``. Weights never come from torch.hub; the engine loads
them from the I-Scene image-conditioner checkpoint (or a local file).

Precision: :meth:`DinoVisionTransformer.set_torso_dtype` puts the blocks' Linear layers (attention and MLP,
all the FLOPs) in float16/bfloat16; the residual stream, the LayerNorms and LayerScale stay float32 (each
half-precision branch output is promoted back when LayerScale multiplies it), as autocast would run it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .attention import attention
from .precision import TorsoPrecision

PRESETS = {
    "dinov2_vitl14_reg": {"img_size": 518, "patch_size": 14, "embed_dim": 1024, "depth": 24, "num_heads": 16,
                          "mlp_ratio": 4, "init_values": 1.0, "ffn_layer": "mlp", "block_chunks": 0,
                          "num_register_tokens": 4, "interpolate_antialias": True, "interpolate_offset": 0.0},
}
# The tiny package's DINOv2 (tests, CI, offline demos): the release's layout at a small width and depth, named in
# its config.yml exactly as the release names dinov2_vitl14_reg.
PRESETS["dinov2_tiny14_reg"] = {**PRESETS["dinov2_vitl14_reg"], "embed_dim": 32, "depth": 2, "num_heads": 2}


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).unbind(2)
        return self.proj(attention(q, k, v).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, init_values: float | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.attn.qkv.weight.dtype  # the torso dtype; the residual stream x stays float32
        x = x + self.ls1(self.attn(self.norm1(x).type(dtype)))
        return x + self.ls2(self.mlp(self.norm2(x).type(dtype)))


class DinoVisionTransformer(TorsoPrecision, nn.Module):
    def __init__(self, img_size: int = 518, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0, init_values: float | None = None,
                 ffn_layer: str = "mlp", block_chunks: int = 0, num_register_tokens: int = 0,
                 interpolate_antialias: bool = False, interpolate_offset: float = 0.1):
        super().__init__()
        if ffn_layer != "mlp" or block_chunks != 0:
            raise ValueError("only ffn_layer='mlp' and block_chunks=0 (the dinov2_vitl14_reg layout) are supported")
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid ** 2 + 1, embed_dim))
        self.register_tokens = (nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
                                if num_register_tokens else None)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, init_values) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def torso_modules(self) -> list[nn.Module]:
        return [self.blocks]

    @classmethod
    def from_preset(cls, name: str, **overrides) -> DinoVisionTransformer:
        if name not in PRESETS:
            raise ValueError(f"unknown DINOv2 model {name!r}; known: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def forward_prenorm(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, 1 + R + P, C]`` after the last block, before the final norm."""
        h, w = x.shape[-2:]
        if h != w or h // self.patch_size != self.grid:
            raise ValueError(f"DINOv2 expects {self.grid * self.patch_size}x{self.grid * self.patch_size} "
                             f"images, got {w}x{h}")
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens
