"""From masks and scores to a label map: overlap resolution, clean-up, the palette PNG and ``segments.json``.

Masks arrive one at a time (full resolution, with the model's score and the prompt they answer) and are
resolved as they come: each pixel belongs to the highest-scoring mask that covers it (the first one added on a
tie). Then each mask loses its connected fragments smaller than ``min_area`` (8-connected, as SAM's own
post-processing), optionally gets its holes filled (only background pixels: an object inside a hole stays),
and the masks left with pixels become ids 1..K in the order they were added.

``labels.png`` is a palette PNG: index = id, 0 = background (black); the palette gives every index a distinct
saturated colour, so the file displays as a colour overlay and stays paintable with the same colours.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

MAX_ID = 255
GOLDEN = (math.sqrt(5) - 1) / 2
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def palette() -> np.ndarray:
    """``uint8 [256, 3]``: index 0 black; index i has hue ``frac(i·φ⁻¹)``, which puts consecutive ids far apart
    on the colour wheel, and saturation/value alternating in bands of 8/16 ids, so that ids whose hues meet
    again differ in strength and all 255 colours are distinct."""
    colours = np.zeros((MAX_ID + 1, 3), dtype=np.uint8)
    for index in range(1, MAX_ID + 1):
        rgb = colorsys.hsv_to_rgb((index * GOLDEN) % 1.0, (0.95, 0.7)[(index // 8) % 2], (1.0, 0.8)[(index // 16) % 2])
        colours[index] = [round(c * 255) for c in rgb]
    return colours


PALETTE = palette()


@dataclass
class Segmentation:
    """The label map (``uint8 [H, W]``, ids 1..K) and what ``segments.json`` says about it."""

    labels: np.ndarray
    segments: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.labels.shape[1]), int(self.labels.shape[0])


class LabelAssembler:
    """Collects masks (streamed, so only one full-resolution mask is held at a time) into a label map."""

    def __init__(self, height: int, width: int):
        self.best = np.full((height, width), -np.inf, dtype=np.float32)
        self.owner = np.zeros((height, width), dtype=np.uint16)  # 1-based index of the winning mask, 0 = none
        self.entries: list[tuple[float, int | None, bool]] = []  # score, prompt, was the mask empty

    def add(self, mask: np.ndarray, score: float, prompt: int | None = None) -> None:
        if len(self.entries) >= np.iinfo(self.owner.dtype).max:
            raise ValueError("too many masks for one label map")
        self.entries.append((float(score), prompt, not mask.any()))
        wins = mask & (np.float32(score) > self.best)
        self.best[wins] = score
        self.owner[wins] = len(self.entries)

    def finish(self, min_area: float = 0.0, fill_holes: bool = False) -> Segmentation:
        """Resolve fragments and holes, number the surviving masks 1..K (at most 255) in the order added."""
        owner = self.owner.copy()
        min_pixels = min_area * owner.size
        reasons: dict[int, str] = {}
        for index, region in _regions(owner, len(self.entries)):
            if region is None:
                empty = self.entries[index - 1][2]
                reasons[index] = "the model found no mask" if empty else "covered by higher-scoring masks"
            elif not _drop_fragments(owner, index, region, min_pixels):
                reasons[index] = f"only fragments smaller than min_area ({math.ceil(min_pixels)} pixels) were left"
        if fill_holes:
            for index, region in _regions(owner, len(self.entries)):
                if region is not None:
                    _fill_holes(owner, index, region)
        survivors = [index for index in range(1, len(self.entries) + 1) if index not in reasons]
        for index in survivors[MAX_ID:]:
            reasons[index] = f"more than {MAX_ID} objects: a label map holds {MAX_ID}"
        lookup = np.zeros(len(self.entries) + 1, dtype=np.uint8)
        for new_id, index in enumerate(survivors[:MAX_ID], 1):
            lookup[index] = new_id
        labels = lookup[owner]
        return Segmentation(labels, self._segments(labels, survivors[:MAX_ID]),
                            [{"prompt": self.entries[i - 1][1], "reason": reasons[i]} for i in sorted(reasons)])

    def _segments(self, labels: np.ndarray, survivors: list[int]) -> list[dict]:
        areas = np.bincount(labels.ravel(), minlength=len(survivors) + 1)
        segments = []
        boxes = ndimage.find_objects(labels, max_label=len(survivors))  # every survivor keeps at least one pixel
        for new_id, (index, box) in enumerate(zip(survivors, boxes, strict=True), 1):
            score, prompt, _ = self.entries[index - 1]
            rows, cols = box
            segments.append({"id": new_id, "score": round(score, 6), "area": int(areas[new_id]),
                             "box": [cols.start, rows.start, cols.stop, rows.stop],
                             "colour": PALETTE[new_id].tolist(), "prompt": prompt})
        return segments


def _regions(owner: np.ndarray, count: int):
    """``(index, bounding slices or None)`` for every mask index 1..count."""
    return enumerate(ndimage.find_objects(owner, max_label=count), 1)


def _drop_fragments(owner: np.ndarray, index: int, region: tuple[slice, slice], min_pixels: float) -> bool:
    """Clear the connected parts of mask ``index`` smaller than ``min_pixels``; whether any pixel is left."""
    window = owner[region]
    mine = window == index
    components, count = ndimage.label(mine, structure=EIGHT_CONNECTED)
    small = np.bincount(components.ravel(), minlength=count + 1) < min_pixels
    small[0] = False
    window[small[components]] = 0
    return bool(count) and not small[1:].all()


def _fill_holes(owner: np.ndarray, index: int, region: tuple[slice, slice]) -> None:
    window = owner[region]
    filled = ndimage.binary_fill_holes(window == index)
    window[filled & (window == 0)] = index


def write_segmentation(segmentation: Segmentation, labels_path: str | Path, json_path: str | Path,
                       header: dict) -> dict:
    """Write the palette PNG and ``segments.json`` (``header`` gives ``mode`` and ``model``); return the JSON."""
    image = Image.fromarray(segmentation.labels)
    image.putpalette(PALETTE.tobytes())
    info = {"image_size": list(segmentation.image_size), **header, "segments": segmentation.segments,
            "dropped": segmentation.dropped}
    _replace(labels_path, lambda f: image.save(f, format="PNG", optimize=True))
    _replace(json_path, lambda f: f.write(json.dumps(info, indent=2).encode()))
    return info


def _replace(path: str | Path, write) -> None:
    """Write ``path`` through a temporary file, so readers never see half a file."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        write(handle)
    os.replace(partial, path)
