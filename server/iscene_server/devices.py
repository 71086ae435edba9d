"""Which device and dtype to run on, shared by the engine and segmentation (both build networks on them)."""

from __future__ import annotations

import torch

from .errors import ModelPackageError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA when PyTorch sees it, else the CPU; a named device is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelPackageError("CUDA was requested but this PyTorch build sees no CUDA device",
                                "install a CUDA build of PyTorch, or run with --device cpu")
    return device


def resolve_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """Half-precision torsos on CUDA (float16 unless asked otherwise), float32 on the CPU."""
    if name != "auto" and name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    if device.type != "cuda":
        return torch.float32
    return torch.float16 if name == "auto" else DTYPES[name]
