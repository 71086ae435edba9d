"""Which device and dtype to run on, shared by the engine and segmentation (both build networks on them)."""

from __future__ import annotations

import torch

from .errors import ModelPackageError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA when PyTorch sees it, else the CPU; a named device is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelPackageError(f"{name!r} is not a device", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelPackageError("CUDA was requested but this PyTorch build sees no CUDA device",
                                "install a CUDA build of PyTorch, or run with --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ModelPackageError(f"there is no {name}: this machine has {count} CUDA device{'s' * (count != 1)}",
                                f"use cuda:0 to cuda:{count - 1} (nvidia-smi lists them)")
    return device


def parse_devices(text: str) -> tuple[str, ...]:
    """A comma-separated device list (``"cuda:0,cuda:1"``; ``"cpu,cpu"`` for two CPU workers), each checked."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise ModelPackageError(f"the device list {text!r} has an empty entry", "write it as cuda:0,cuda:1")
    for name in names:
        resolve_device(name)
    return names


def resolve_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """Half-precision torsos on CUDA (float16 unless asked otherwise), float32 on the CPU."""
    if name != "auto" and name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    if device.type != "cuda":
        return torch.float32
    return torch.float16 if name == "auto" else DTYPES[name]
