"""TRELLIS SLat Gaussian decoder (``slat_dec_gs_swin8_B_64l8gs32_fp16``), spec §3.4.

Swin transformer on the 64^3 latent voxels; per voxel 32 Gaussians (offset, colour, scale, rotation,
opacity), decoded into world-space 3D Gaussian parameters by :meth:`SLatGaussianDecoder.to_gaussians`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..geometry.voxels import voxel_centres
from .sparse import SparseTensor
from .sparse_transformer import SparseTransformerBase

_PRIMES = (2, 3, 5, 7, 11, 13)


def radical_inverse(base: int, n: int) -> float:
    value, scale = 0.0, 1.0 / base
    while n > 0:
        n, digit = divmod(n, base)
        value += digit * scale
        scale /= base
    return value


def hammersley(dims: int, index: int, count: int) -> list[float]:
    """Point ``index`` of a ``count``-point Hammersley set: ``[i/n, RI_2(i), RI_3(i), ...]``."""
    return [index / count] + [radical_inverse(_PRIMES[d], index) for d in range(dims - 1)]


def inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


@dataclass
class GaussianParams:
    """One object's Gaussians: raw decoder values and the activated ones a renderer or PLY needs."""

    raw_xyz: torch.Tensor  # [G, 3] in [0, 1]^3 (voxel centre + offset)
    raw_features_dc: torch.Tensor  # [G, 1, 3]
    raw_scaling: torch.Tensor  # [G, 3]
    raw_rotation: torch.Tensor  # [G, 4]
    raw_opacity: torch.Tensor  # [G, 1]
    xyz: torch.Tensor  # [G, 3] scene frame
    scaling: torch.Tensor  # [G, 3]
    rotation: torch.Tensor  # [G, 4] normalised, real part first
    opacity: torch.Tensor  # [G, 1] in (0, 1)

    @property
    def features_dc(self) -> torch.Tensor:
        return self.raw_features_dc


class SLatGaussianDecoder(SparseTransformerBase):
    LAYOUT = (("_xyz", 3), ("_features_dc", 3), ("_scaling", 3), ("_rotation", 4), ("_opacity", 1))

    def __init__(self, resolution: int, model_channels: int, latent_channels: int, num_blocks: int,
                 representation_config: Mapping | None = None, **trunk_args):
        """``trunk_args``: the remaining reference arguments, see :class:`SparseTransformerBase`."""
        super().__init__(latent_channels, model_channels, num_blocks, **trunk_args)
        self.resolution = resolution
        self.rep = dict(representation_config or {})
        count = self.rep["num_gaussians"]
        self.out_layer = nn.Linear(model_channels, count * sum(width for _, width in self.LAYOUT))
        points = torch.tensor([hammersley(3, i, count) for i in range(count)], dtype=torch.float32)
        self.register_buffer("offset_perturbation", torch.atanh((points * 2 - 1) / self.rep["voxel_size"]))

    def forward(self, x: SparseTensor) -> SparseTensor:
        """Latents on 64^3 voxels -> raw per-voxel Gaussian parameters ``[N, 14 * num_gaussians]``."""
        h = self.trunk(x)
        feats = F.layer_norm(h.feats.type(x.dtype), (self.model_channels,))
        return h.replace(self.out_layer(feats))

    def to_gaussians(self, out: SparseTensor) -> list[GaussianParams]:
        """Split the raw head per batch item and apply the Gaussian activations (sh degree 0)."""
        count, lr = self.rep["num_gaussians"], self.rep["lr"]
        results = []
        for rows in out.batch_slices():
            feats, coords = out.feats[rows], out.coords[rows, 1:]
            parts, start = {}, 0
            for name, width in self.LAYOUT:
                parts[name] = feats[:, start:start + count * width].reshape(-1, count, width) * lr[name]
                start += count * width
            offset = parts["_xyz"]
            if self.rep.get("perturb_offset", False):
                offset = offset + self.offset_perturbation
            centre = voxel_centres(coords.float(), self.resolution) + 0.5  # [N, 3] in the raw frame [0, 1]^3
            raw_xyz = (centre[:, None] + torch.tanh(offset) / self.resolution * 0.5 * self.rep["voxel_size"])
            results.append(self._activate(raw_xyz.flatten(0, 1), parts))
        return results

    def _activate(self, raw_xyz: torch.Tensor, parts: dict[str, torch.Tensor]) -> GaussianParams:
        if self.rep.get("scaling_activation", "exp") != "softplus":
            raise ValueError("only the released softplus scaling activation is supported")
        scaling = parts["_scaling"].flatten(0, 1)
        rotation = parts["_rotation"].flatten(0, 1)
        opacity = parts["_opacity"].flatten(0, 1)
        scale_bias = inverse_softplus(self.rep["scaling_bias"])
        opacity_bias = math.log(self.rep["opacity_bias"] / (1 - self.rep["opacity_bias"]))
        scales = torch.sqrt(F.softplus(scaling + scale_bias).square() + self.rep["3d_filter_kernel_size"] ** 2)
        rotation_bias = torch.tensor([1.0, 0.0, 0.0, 0.0], device=rotation.device)
        return GaussianParams(
            raw_xyz=raw_xyz, raw_features_dc=parts["_features_dc"].flatten(0, 1)[:, None, :],
            raw_scaling=scaling, raw_rotation=rotation, raw_opacity=opacity,
            xyz=raw_xyz - 0.5, scaling=scales, rotation=F.normalize(rotation + rotation_bias, dim=-1),
            opacity=torch.sigmoid(opacity + opacity_bias))
