"""A small filesystem shim for fault-injection tests: writes under one folder fail with a chosen errno.

It wraps the one way the server writes files: :mod:`iscene_server.atomic` (the job store, the results writer and
the GLB/PLY exporters), through its module-level ``open``. A failing write leaves what a real full disk leaves: a
created, empty file."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

from iscene_server import atomic


class FaultyDisk:
    def __init__(self, monkeypatch, root: Path):
        self.root = Path(root).resolve()
        self.errno: int | None = None  # fail every write while set
        self.fail_at: int | None = None  # or only the n-th write (1-based) from now
        self.writes = 0
        real_open = builtins.open
        disk = self

        def shim_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax") and disk.hit(file):
                disk.fail(lambda: real_open(file, mode, *args, **kwargs).close())
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(atomic, "open", shim_open, raising=False)

    def hit(self, path) -> bool:
        if not Path(path).resolve().is_relative_to(self.root):
            return False
        self.writes += 1
        return self.errno is not None and (self.fail_at is None or self.writes == self.fail_at)

    def fail(self, leave_empty_file) -> None:
        if self.errno == errno.ENOSPC:
            leave_empty_file()
        raise OSError(self.errno, os.strerror(self.errno))

    def full(self, code: int = errno.ENOSPC, at: int | None = None) -> None:
        """Fail every write from now (``at``: only the at-th write from now) with ``code``."""
        self.errno, self.writes, self.fail_at = code, 0, at

    def heal(self) -> None:
        self.errno, self.fail_at = None, None
