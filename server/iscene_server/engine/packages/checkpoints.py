"""Reading checkpoint files and loading them into networks with strict key and shape matching."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ...errors import ModelPackageError

_MAX_LISTED = 5
SOURCE_STAMP_KEY = "source_stamp"  # metadata of a converted copy: the stamp of the .pt it was made from


def display_name(path: Path) -> str:
    """A checkpoint as messages name it: its folder and file name, never the server's full path (messages are
    served by the API)."""
    return f"{path.parent.name}/{path.name}"


def _scrub(exc: Exception, path: Path) -> str:
    return str(exc).replace(str(path), display_name(path))[:300]


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several error types for damaged files
        raise ModelPackageError(f"cannot read weights file {display_name(path)}: {_scrub(exc, path)}",
                                "the file is damaged or incomplete: delete it and download it again") from None


def read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pt`` state dict, read with ``weights_only=True`` (no code in the file is ever run)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise ModelPackageError(f"cannot read checkpoint {display_name(path)}: {_scrub(exc, path)}",
                                "the file is damaged, or is not a plain PyTorch state dict") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelPackageError(f"checkpoint {display_name(path)} is not a state dict (a mapping of names to tensors)",
                                "use the checkpoint file the model package ships")
    return dict(state)


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "iscene" / "converted"


def source_stamp(path: Path) -> str:
    """What a converted copy records of its source: size, inode and the nanosecond modification and change
    times. The change time (``st_ctime_ns``) cannot be set back by a program, so a same-sized rewrite that keeps
    the old modification time (``cp -p``, rsync, tar, ``os.utime``) still reads as changed; a stat costs nothing,
    unlike hashing gigabytes of weights on every start."""
    info = path.stat()
    return f"{info.st_size}:{info.st_ino}:{info.st_mtime_ns}:{info.st_ctime_ns}"


def _is_current(converted: Path, stamp: str) -> bool:
    try:
        with safe_open(str(converted), "pt") as f:
            return (f.metadata() or {}).get(SOURCE_STAMP_KEY) == stamp
    except Exception:  # a damaged or foreign file is simply not a current copy
        return False


def safetensors_for(pt_path: Path) -> Path:
    """The safetensors copy of a ``.pt`` checkpoint, written next to it on first use.

    Later loads memory-map the copy instead of unpickling. Where the package folder is read-only the copy
    goes to ``~/.cache/iscene/converted``. A copy whose recorded source stamp (:func:`source_stamp`) no longer
    matches the file is rewritten.
    """
    pt_path = Path(pt_path)
    source = source_stamp(pt_path.resolve())
    beside = pt_path.with_suffix(".safetensors")
    path_key = hashlib.sha256(str(pt_path.resolve()).encode()).hexdigest()[:16]
    fallback = _cache_dir() / f"{pt_path.stem}-{path_key}.safetensors"
    for candidate in (beside, fallback):
        if candidate.is_file() and _is_current(candidate, source):
            return candidate
    state = {k: v.contiguous().clone() for k, v in read_torch_checkpoint(pt_path).items()}
    metadata = {"source": pt_path.name, SOURCE_STAMP_KEY: source}
    for target in (beside, fallback):
        if _write_atomically(state, target, metadata):
            return target
    raise ModelPackageError(f"cannot write a safetensors copy of {display_name(pt_path)}",
                            f"make the package's {beside.parent.name}/ folder writable, or the user cache "
                            f"(iscene/converted under XDG_CACHE_HOME or ~/.cache)")


def _write_atomically(state: dict[str, torch.Tensor], target: Path, metadata: dict[str, str]) -> bool:
    """Write through a temporary file so a crash never leaves a half-written copy; False if not writable."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    except OSError:
        return False
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, target)
        return True
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return False


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a ``.safetensors`` file, or from a ``.pt`` file through its safetensors copy."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_safetensors(safetensors_for(path))


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`ModelPackageError` unless ``state`` has exactly the module's keys and shapes."""
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong_shape = [f"{k} has shape {list(state[k].shape)}, expected {list(expected[k].shape)}"
                   for k in sorted(expected.keys() & state.keys()) if state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): " + _listing(
            [f"{k} (expected shape {list(expected[k].shape)})" for k in missing]))
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): " + _listing(unexpected))
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} key(s) with the wrong shape: " + _listing(wrong_shape))
    if problems:
        raise ModelPackageError(
            f"weights in {source} do not fit {type(module).__name__}: " + "; ".join(problems),
            "the checkpoint belongs to a different model or configuration: check that the package's "
            "config and checkpoint files belong together (and re-download them if in doubt)")


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` into ``module`` after :func:`check_state_dict`; tensors are cast to the module's dtypes."""
    check_state_dict(module, state, source)
    module.load_state_dict(state, strict=True)
    return module
