"""Synthetic benchmark scenes: the example render with any number of instances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLE = Path(__file__).parents[1] / "examples" / "living_room.png"


def synthetic_scene(count: int, folder: Path) -> tuple[Path, Path]:
    """The example render with ``count`` rectangular instances laid out on a grid; returns the image and label
    map files written into ``folder``."""
    image = Image.open(EXAMPLE).convert("RGB")
    w, h = image.size
    ids = np.zeros((h, w), np.uint8)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    for i in range(count):
        r, c = divmod(i, cols)
        x0, y0 = 80 + c * (w - 160) // cols, 60 + r * (h - 120) // rows
        ids[y0:y0 + (h - 120) // rows - 12, x0:x0 + (w - 160) // cols - 12] = i + 1
    image_path, labels_path = folder / f"scene_{count}.png", folder / f"labels_{count}.png"
    image.save(image_path)
    Image.fromarray(ids).save(labels_path)
    return image_path, labels_path
