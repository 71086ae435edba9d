"""A seeded SAM in ``transformers``' format (``config.json``, ``model.safetensors``, processor config), for
tests, CI and offline demos: the real architecture with its real 1024² input and 16-pixel patches, at tiny
widths and depths (about 0.2 M parameters, a fraction of a second per image on a CPU).

Random weights alone give masks that are all in or all out and predicted IoUs near 0; a few deterministic
adjustments (see :func:`_calibrate`) make the masks follow the image in blobs and the scores look like SAM's,
so that every code path (filters, overlaps, fragments) has something to do. The masks still mean nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SEED = 20260301
TINY_SAM = {
    "vision_config": {"hidden_size": 32, "output_channels": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "global_attn_indexes": [1], "num_pos_feats": 16, "mlp_dim": 64},
    "prompt_encoder_config": {"hidden_size": 32, "mask_input_channels": 4},
    "mask_decoder_config": {"hidden_size": 32, "mlp_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                            "iou_head_hidden_dim": 32},
}
MASK_LOGIT_GAIN = 10.0  # spread of the mask logits: a few units, so stability scores vary
TYPICAL_SCORE = 0.9


def write_tiny_sam(folder: str | Path, seed: int = SEED, release_sizes: bool = False) -> Path:
    """Write the model and its processor into ``folder`` with ``save_pretrained``; ``release_sizes`` gives
    SAM ViT-B's sizes (random weights, ~375 MB) instead, for timings without a download."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    folder = Path(folder)
    processor = SamProcessor(image_processor=SamImageProcessor())
    torch.manual_seed(seed)
    model = SamModel(SamConfig() if release_sizes else SamConfig(**TINY_SAM)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and "pos" not in name:  # positional tables keep the model's own initialisation
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(param[0].numel()))
        _calibrate(model, processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _calibrate(model, processor) -> None:
    """Adjust the mask decoder of a randomly initialised SAM:

    * each upscaling transposed convolution gets one weight for all its kernel positions, so a mask is made of
      smooth blobs of the 64² image embedding instead of a 4×4 dither;
    * the hypernetworks' outputs are projected off the mean upscaled feature (of a calibration image) and
      scaled, so mask logits vary around 0 with the image instead of sharing one large offset;
    * the IoU head answers about 0.9, give or take a few hundredths.
    """
    decoder = model.mask_decoder
    for conv in (decoder.upscale_conv1, decoder.upscale_conv2):
        conv.weight.copy_(conv.weight[:, :, :1, :1].expand_as(conv.weight))
    pixels = processor(images=_calibration_image(), return_tensors="pt")["pixel_values"]
    embeddings = model.get_image_embeddings(pixels)
    upscaled = decoder.activation(decoder.upscale_layer_norm(decoder.upscale_conv1(embeddings)))
    features = decoder.activation(decoder.upscale_conv2(upscaled))  # as SamMaskDecoder.forward computes them
    mean = features[0].mean(dim=(1, 2))
    direction = mean / mean.norm()
    off_mean = torch.eye(len(direction)) - torch.outer(direction, direction)
    for mlp in decoder.output_hypernetworks_mlps:
        mlp.proj_out.weight.copy_(off_mean @ mlp.proj_out.weight * MASK_LOGIT_GAIN)
        mlp.proj_out.bias.copy_(off_mean @ mlp.proj_out.bias * MASK_LOGIT_GAIN)
    head = decoder.iou_prediction_head.proj_out
    head.weight.mul_(0.05)
    head.bias.fill_(TYPICAL_SCORE)


def _calibration_image(size: int = 256) -> Image.Image:
    """A fixed smooth colour pattern."""
    y, x = np.mgrid[0:size, 0:size] / size
    channels = np.stack([np.sin(7 * x + 3 * y), np.cos(5 * y - 2 * x), np.sin(36 * x * y)], axis=-1)
    return Image.fromarray(((channels + 1) * 127.5).astype(np.uint8))
