"""Values computed from an image's pixels (the label map's objects), kept off Blender's draw path.

Panels only look values up (:meth:`PixelStats.get`, a dictionary read). A timer calls :meth:`PixelStats.refresh`
on the main thread: it reads an image's pixels (``foreach_get``, the only part that must run there) when the
image changed (size, file, saved/unsaved), and while it is being painted at most every ``REFRESH_S`` seconds
and never more than ``MAIN_THREAD_SHARE`` of the time; one image per call. The counting runs on a worker
thread, and is skipped when the pixels are the same as last time.
"""

from __future__ import annotations

import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .png import linear_to_srgb

REFRESH_S = 1.0  # while an image is being painted, its values are refreshed at most this often
MAIN_THREAD_SHARE = 0.05  # ... and reading its pixels takes at most this share of the main thread's time
WANTED_S = 5.0  # an image is refreshed while a panel asked for it this recently
PALETTE = "iscene_palette"  # on a label map made by Segment: {"<packed colour>": id} of its PNG palette


def read_pixels(image) -> np.ndarray:
    """float32 ``[H·W·4]`` RGBA of an image datablock, bottom row first (main thread only)."""
    width, height = image.size
    pixels = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(pixels)
    return pixels


def colour_keys(pixels: np.ndarray) -> np.ndarray:
    """uint32 ``R + G·256 + B·65536`` (8-bit values) of every pixel."""
    rgb = np.rint(pixels.reshape(-1, 4)[:, :3] * 255.0).astype(np.uint32)  # [N, 3]
    return _packed(rgb)


def _packed(rgb: np.ndarray) -> np.ndarray:
    return rgb[:, 0] | (rgb[:, 1] << 8) | (rgb[:, 2] << 16)


def float_map_ids(pixels: np.ndarray, linear: bool) -> list[int]:
    """The instance ids the server reads from a label map Blender holds as float pixels (a 16-bit PNG), from
    those pixels: grey maps (``I;16`` for Pillow) are their 16-bit values, colour maps the packed colour of each
    channel's high byte (Pillow reads 16-bit RGB as 8-bit, keeping the high byte). ``linear``: the image is
    colour-managed (not Non-Color), so Blender linearised its values and the sRGB curve is undone first."""
    rgb = pixels.reshape(-1, 4)[:, :3]  # [N, 3]
    if linear:
        rgb = linear_to_srgb(rgb)
    values = np.rint(np.clip(rgb, 0.0, 1.0) * 65535.0).astype(np.uint32)  # [N, 3] the stored 16-bit values
    if bool(np.all((values[:, 0] == values[:, 1]) & (values[:, 0] == values[:, 2]))):
        return sorted(int(i) for i in np.unique(values[:, 0]) if i)
    return label_ids(_packed(values >> 8))


def label_ids(keys: np.ndarray, palette: dict[int, int] | None = None) -> list[int]:
    """The instance ids the server reads from these colours: a palette PNG's indices, grey values when every
    pixel is grey, else the packed colour; 0 (background) left out. A deliberate copy of the rules of the
    server's ``decode_label_map`` (``iscene_server/engine/preprocess/images.py``) for 8-bit label maps,
    checked against it by ``tests/test_addon_copies.py``."""
    distinct = np.unique(keys)
    if palette and all(int(k) in palette for k in distinct if k):
        ids = [palette[int(k)] for k in distinct if k]
    else:
        r, g, b = distinct & 0xFF, (distinct >> 8) & 0xFF, distinct >> 16
        ids = r.tolist() if bool(np.all((r == g) & (r == b))) else distinct.tolist()
    return sorted(int(i) for i in set(ids) if i)


@dataclass(frozen=True)
class LabelStats:
    ids: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ids)


@dataclass
class _Entry:
    signature: tuple = ()
    stats: LabelStats | None = None
    digest: int | None = None
    read_at: float = 0.0
    read_s: float = 0.0
    wanted_at: float = 0.0
    pending: Future | None = field(default=None, repr=False)


def _signature(image) -> tuple:
    return (tuple(image.size), image.is_dirty, image.filepath, image.source, image.packed_file is not None,
            image.colorspace_settings.name)


def _palette(image) -> dict[int, int] | None:
    palette = image.get(PALETTE)
    return {int(k): int(v) for k, v in palette.items()} if palette else None


@dataclass(frozen=True)
class PixelFormat:
    """How a label map's ids follow from the float pixels Blender holds, by what its upload will be: a float
    image loaded from a file (a 16-bit PNG) uploads that file, any other image a PNG of its 8-bit values
    (:func:`.image_files.image_bytes`); a colour-managed float image holds linear values."""

    float_file: bool = False
    linear: bool = False


def pixel_format(image) -> PixelFormat:
    colour_managed = bool(image.is_float) and image.colorspace_settings.name not in ("Non-Color", "Raw")
    return PixelFormat(bool(image.is_float) and not image.is_dirty, colour_managed)


def map_ids(pixels: np.ndarray, palette, kind: PixelFormat) -> list[int]:
    """The instance ids the server will read from the label map whose pixels these are."""
    if kind.float_file:
        return float_map_ids(pixels, kind.linear)
    if kind.linear:  # a painted float image: uploaded as the sRGB bytes of its values, as png.image_png encodes
        rgba = pixels.reshape(-1, 4)
        pixels = np.concatenate([linear_to_srgb(rgba[:, :3]), rgba[:, 3:]], axis=1).astype(np.float32)
    return label_ids(colour_keys(pixels), palette)


def _count(pixels: np.ndarray, palette, kind: PixelFormat,
           previous: tuple[int | None, LabelStats | None]) -> tuple[int, LabelStats]:
    digest = zlib.crc32(pixels.view(np.uint8))
    if digest == previous[0] and previous[1] is not None:
        return digest, previous[1]  # painted over with the same ids, or nothing changed
    return digest, LabelStats(tuple(map_ids(pixels, palette, kind)))


class PixelStats:
    """Label-map statistics per image name, refreshed off the draw path."""

    def __init__(self):
        self._entries: dict[str, _Entry] = {}
        self._pool: ThreadPoolExecutor | None = None

    def get(self, image) -> LabelStats | None:
        """The last stats of ``image`` (None until the first count lands); marks it wanted. Reads no pixels."""
        entry = self._entries.setdefault(image.name, _Entry())
        entry.wanted_at = time.monotonic()
        return entry.stats

    def peek(self, image) -> LabelStats | None:
        """The last stats of ``image`` without asking for a refresh."""
        entry = self._entries.get(image.name)
        return entry.stats if entry is not None else None

    def forget(self) -> None:
        """Drop every value (counts still running land nowhere)."""
        self._entries.clear()

    def needs_refresh(self) -> bool:
        now = time.monotonic()
        return any(e.pending is not None or now - e.wanted_at < WANTED_S for e in self._entries.values())

    def refresh(self, images) -> bool:
        """Land finished counts and start at most one new read; ``images`` maps names to image datablocks.
        Returns whether anything is still pending."""
        now = time.monotonic()
        for entry in self._entries.values():
            if entry.pending is not None and entry.pending.done():
                entry.digest, entry.stats = entry.pending.result()
                entry.pending = None
        for name, entry in sorted(self._entries.items(), key=lambda item: item[1].read_at):
            image = images.get(name)
            if image is None or entry.pending is not None or now - entry.wanted_at > WANTED_S:
                continue
            if self._due(image, entry, now):
                self._read(image, entry)
                break
        return any(e.pending is not None for e in self._entries.values())

    @staticmethod
    def _due(image, entry: _Entry, now: float) -> bool:
        if not image.size[0] or not image.size[1]:
            return False
        if _signature(image) != entry.signature:
            return True
        interval = max(REFRESH_S, entry.read_s / MAIN_THREAD_SHARE)
        return image.is_dirty and now - entry.read_at >= interval

    def _read(self, image, entry: _Entry) -> None:
        start = time.monotonic()
        entry.signature = _signature(image)
        pixels = read_pixels(image)
        palette = None if image.is_dirty else _palette(image)
        entry.read_at = time.monotonic()
        entry.read_s = entry.read_at - start
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iscene-pixels")
        entry.pending = self._pool.submit(_count, pixels, palette, pixel_format(image), (entry.digest, entry.stats))

    def wait(self, timeout: float = 30.0) -> None:
        """Block until the pending counts are done (tests, and scripts that need the value now)."""
        for entry in list(self._entries.values()):
            if entry.pending is not None:
                entry.pending.result(timeout)

    def clear(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._entries.clear()
