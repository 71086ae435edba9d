"""The preprocessing case's scene, decoded exactly as ``generate`` and ``POST /v1/jobs`` decode an upload.

A vector holds each input either as the encoded file an artist would upload (``input.scene_file``,
``input.label_map_file``: the file's bytes as ``uint8 [N]``; any format the product reads, e.g. a palette or
16-bit PNG) or as pixels (``input.scene_rgb_u8``, ``input.label_map_u8``): ``uint8 [H, W, 3 | 4]`` RGB or RGBA,
``[H, W]`` grey, ``uint8 [H, W, 3]`` RGB-coded ids (``R + G·256 + B·65536``) or ``uint16 [H, W]`` 16-bit ids.
Pixels are written to a lossless PNG of their own layout, so both forms go through the product's
:func:`~iscene_server.engine.preprocess.load_scene`: alpha composited onto black, ids decoded from whatever
encoding, the image brought to the label map's size.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ..engine.preprocess import SceneInput, load_scene

PNG_MODES = ("L", "LA", "I;16", "RGB", "RGBA")  # the layouts a PNG stores losslessly
MAX_16_BIT = 2 ** 16 - 1


def scene_input(tensors: dict[str, torch.Tensor]) -> SceneInput:
    """The case's scene image and label map, decoded by the product."""
    image = _encoded(tensors, "input.scene_file", "input.scene_rgb_u8")
    labels = _encoded(tensors, "input.label_map_file", "input.label_map_u8")
    return load_scene(image, labels)


def _encoded(tensors: dict[str, torch.Tensor], file_key: str, pixels_key: str) -> bytes:
    if file_key in tensors:
        return tensors[file_key].numpy().astype(np.uint8, copy=False).tobytes()
    if pixels_key in tensors:
        return png_bytes(tensors[pixels_key].numpy(), pixels_key)
    raise ValueError(f"the vector has neither {file_key} (an encoded image) nor {pixels_key} (its pixels)")


def png_bytes(pixels: np.ndarray, name: str) -> bytes:
    """``pixels`` as a PNG of the same layout; integer grey ids above 8 bits become a 16-bit PNG."""
    if pixels.ndim == 2 and pixels.dtype.kind in "iu" and pixels.dtype != np.uint8:
        if pixels.size and (pixels.min() < 0 or pixels.max() > MAX_16_BIT):
            raise ValueError(f"{name} holds ids outside [0, {MAX_16_BIT}]: store larger ids RGB-coded "
                             "(uint8 [H, W, 3], id = R + G·256 + B·65536)")
        pixels = pixels.astype(np.uint16)
    try:
        image = Image.fromarray(np.ascontiguousarray(pixels))
    except TypeError:
        image = None
    if image is None or image.mode not in PNG_MODES:
        raise ValueError(f"{name} is {pixels.dtype} {list(pixels.shape)}, not an image layout: store uint8 "
                         "[H, W, 3 | 4] or [H, W], or uint16 [H, W]")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
