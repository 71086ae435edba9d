"""The download folder's size cap: job folders are removed oldest first until the folder fits, never a folder
of a job still in use. Nothing here touches ``bpy``."""

from __future__ import annotations

import shutil
from pathlib import Path

GB = 1024 ** 3


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def prune(root: Path, limit_bytes: int, keep: set[Path]) -> list[Path]:
    """Delete the oldest job folders under ``root`` until it holds at most ``limit_bytes``; ``keep`` (folders
    of jobs in use) are never deleted. Returns the deleted folders."""
    if not root.is_dir():
        return []
    kept = {path.resolve() for path in keep}
    folders = sorted((path for path in root.iterdir() if path.is_dir()), key=lambda path: path.stat().st_mtime)
    sizes = {folder: folder_size(folder) for folder in folders}
    total = sum(sizes.values())
    deleted = []
    for folder in folders:
        if total <= limit_bytes:
            break
        if folder.resolve() in kept:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= sizes[folder]
        deleted.append(folder)
    return deleted
