"""A bound on the image decoding that submits do: how many decodes at once, and how much memory they hold.

Submits decode their images in FastAPI's worker threads (handlers are plain functions), never on the event
loop, so ``/v1/health`` and polls stay responsive. A 40-megapixel scene still costs about a gigabyte while it
is decoded; :class:`DecodeGate` admits a decode only while fewer than ``max_decodes`` run and their estimated
memory stays within ``max_bytes``. A submit that finds no room within ``wait_s`` is refused with 503 and a
``Retry-After``, instead of the server running out of memory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import UnavailableError

# Decoded bytes per pixel of one uploaded image while a submit is decoded: the pixels themselves (RGB/RGBA,
# 3-4 bytes), the RGB conversion and resize copies, the uint32 id map and the sort behind its unique ids.
BYTES_PER_PIXEL = 12
DEFAULT_MAX_DECODES = 2
DEFAULT_DECODE_MEMORY_MB = 2048
RETRY_AFTER_S = 5


class BusyError(UnavailableError):
    """The server is decoding as many images as it allows; the client should retry after ``retry_after`` s."""

    code = "busy"

    def __init__(self, message: str, hint: str, retry_after: int = RETRY_AFTER_S):
        super().__init__(message, hint)
        self.retry_after = retry_after


class DecodeGate:
    def __init__(self, max_decodes: int = DEFAULT_MAX_DECODES, max_bytes: int = DEFAULT_DECODE_MEMORY_MB * 2 ** 20,
                 wait_s: float = 2.0):
        if max_decodes < 1 or max_bytes < 1:
            raise ValueError("max_decodes and max_bytes must be at least 1")
        self.max_decodes, self.max_bytes, self.wait_s = max_decodes, max_bytes, wait_s
        self.running = 0
        self.reserved = 0
        self._room = threading.Condition()

    @contextmanager
    def admit(self, pixels: int) -> Iterator[None]:
        """Hold a decode slot and the memory of ``pixels`` decoded pixels for the ``with`` block."""
        need = min(pixels * BYTES_PER_PIXEL, self.max_bytes)  # one request alone is always admitted eventually
        with self._room:
            if not self._room.wait_for(lambda: self._fits(need), timeout=self.wait_s):
                raise BusyError(f"the server is decoding {self.running} uploads already "
                                f"({self.reserved / 2 ** 20:.0f} MB of {self.max_bytes / 2 ** 20:.0f} MB)",
                                f"retry in {RETRY_AFTER_S} s (the add-on does); smaller images decode faster")
            self.running += 1
            self.reserved += need
        try:
            yield
        finally:
            with self._room:
                self.running -= 1
                self.reserved -= need
                self._room.notify_all()

    def _fits(self, need: int) -> bool:
        return self.running < self.max_decodes and self.reserved + need <= self.max_bytes
