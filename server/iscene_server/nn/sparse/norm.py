"""Group normalisation over all voxels of each batch item."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tensor import SparseTensor


class SparseGroupNorm32(nn.GroupNorm):
    """``nn.GroupNorm`` applied per batch item to its ``[C, N_b]`` features, computed in float32.

    One item (the decoders run one object at a time) is one ``F.group_norm`` call; several items use
    per-item statistics gathered with ``index_add_``.
    """

    def forward(self, x: SparseTensor) -> SparseTensor:
        if x.batch_size == 1:
            normed = F.group_norm(x.feats.float().T[None], self.num_groups, self.weight, self.bias, self.eps)
            return x.replace(torch.empty_like(x.feats).copy_(normed[0].T))  # [1, C, N] -> [N, C], x's dtype
        feats = x.feats.float()
        n, c = feats.shape
        g = self.num_groups
        grouped = feats.reshape(n, g, c // g)
        batch = x.batch_index()
        per_item = (x.batch_counts().to(feats.dtype) * (c // g)).unsqueeze(1)  # [B, 1]
        mean = torch.zeros(x.batch_size, g, dtype=feats.dtype, device=feats.device)
        mean.index_add_(0, batch, grouped.sum(-1))
        mean = mean / per_item
        centred = grouped - mean[batch].unsqueeze(-1)
        var = torch.zeros_like(mean).index_add_(0, batch, centred.square().sum(-1)) / per_item
        normed = centred * torch.rsqrt(var[batch] + self.eps).unsqueeze(-1)
        out = normed.reshape(n, c) * self.weight + self.bias
        return x.replace(out.to(x.dtype))
