"""The one way the job store, the results writer and the GLB/PLY writers write a file: whole or not at all, and
a disk that cannot take it reported as an error the user can act on (no server paths in the message)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import DiskFullError, StorageError

DATA_DIR_SETTING = "--data-dir"  # how a user names the folder the server writes in
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def storage_error(exc: OSError, setting: str = DATA_DIR_SETTING) -> StorageError | None:
    """The user's error for a failed write, or None when ``exc`` is not about the disk (e.g. a missing file)."""
    if exc.errno in DISK_FULL:
        return DiskFullError(f"the disk holding the data folder ({setting}) is full",
                             f"free disk space in {setting}; the server carries on by itself once there is room")
    if exc.errno in NOT_WRITABLE:
        reason = exc.strerror or errno.errorcode.get(exc.errno, "error")
        return StorageError(f"the server cannot write in its data folder ({setting}): {reason}",
                            f"make {setting} writable (mounted read-write, owned by the server's user), or "
                            f"restart the server with a writable {setting}")
    return None


def write_atomic(path: str | Path, content: bytes | Callable[[BinaryIO], None],
                 setting: str = DATA_DIR_SETTING) -> Path:
    """Write ``content`` (bytes, or a function filling a binary file) to ``path`` through ``<path>.partial``
    and an atomic rename: readers see the old file or the new one, never a part. On failure the partial file is
    removed and a disk problem raised as :class:`StorageError` (:class:`DiskFullError` for a full disk)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as file:
            if callable(content):
                content(file)
            else:
                file.write(content)
        os.replace(partial, path)
        return path
    except OSError as exc:
        with contextlib.suppress(OSError):  # a read-only disk has no partial file to leave behind
            partial.unlink(missing_ok=True)
        problem = storage_error(exc, setting)
        if problem is None:
            raise
        raise problem from None
