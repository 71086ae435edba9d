"""Image condition tokens for every slot image, computed once per distinct image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

CONDITION_BATCH = 8  # slot images per DINOv2 forward pass


@torch.no_grad()
def encode_images(conditioner: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device,
                  batch: int = CONDITION_BATCH) -> torch.Tensor:
    """``images [B, 3, 518, 518]`` in [0, 1] -> condition tokens ``[B, T, C]`` (float32, on ``device``)."""
    images = torch.as_tensor(images)
    chunks = [conditioner(images[i:i + batch].to(device)) for i in range(0, images.shape[0], batch)]
    return torch.cat(chunks, dim=0).float()
