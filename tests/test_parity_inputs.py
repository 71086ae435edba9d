"""`iscene-server parity` reads the preprocessing vector's inputs in every encoding the product reads: the stored
scene and label map re-encoded (RGBA, palette, 16-bit, RGB-coded, encoded files) pass like the original."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PARITY
from PIL import Image
from safetensors.torch import load_file, save_file

from iscene_server.parity.inputs import png_bytes
from iscene_server.parity.runner import run_file

STORED = load_file(str(PARITY / "preprocess.safetensors"))
RGB = STORED["input.scene_rgb_u8"].numpy()  # uint8 [480, 640, 3]
IDS = STORED["input.label_map_u8"].numpy()  # uint8 [480, 640], ids 5, 9, 200
PACKED = {5: (5, 1, 0), 9: (9, 2, 1), 200: (200, 3, 2)}  # codes whose G and B matter, ids in the same order


def file_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def encoded(image: Image.Image) -> torch.Tensor:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return file_tensor(buffer.getvalue())


def rgba(alpha: np.ndarray) -> np.ndarray:
    return np.concatenate([RGB, alpha[..., None].astype(np.uint8)], axis=-1)


def palette_png() -> torch.Tensor:
    image = Image.fromarray(IDS, mode="P")
    image.putpalette([channel for index in range(256) for channel in (index, 255 - index, index // 2)])
    return encoded(image)


def rgb_coded(codes: dict[int, tuple[int, int, int]]) -> np.ndarray:
    coded = np.zeros((*IDS.shape, 3), dtype=np.uint8)
    for label, colour in codes.items():
        coded[label == IDS] = colour
    return coded


def packed_id(colour: tuple[int, int, int]) -> int:
    r, g, b = colour
    return r + g * 256 + b * 65536


# name -> (scene input, label-map input, expected label ids); None keeps the stored input
ENCODINGS = {
    "stored": ({}, {}, None),
    "rgba_opaque": ({"input.scene_rgb_u8": torch.from_numpy(rgba(np.full(IDS.shape, 255)))}, {}, None),
    # transparent background: composited to black, and the slots mask the background away anyway
    "rgba_transparent_background": ({"input.scene_rgb_u8": torch.from_numpy(rgba((IDS > 0) * 255))}, {}, None),
    "scene_png_file": ({"input.scene_file": encoded(Image.fromarray(RGB))}, {}, None),
    "scene_rgba_png_file": ({"input.scene_file": encoded(Image.fromarray(rgba(np.full(IDS.shape, 255))))}, {}, None),
    "labels_palette_png_file": ({}, {"input.label_map_file": palette_png()}, None),
    "labels_16_bit": ({}, {"input.label_map_u8": torch.from_numpy(IDS.astype(np.uint16))}, None),
    "labels_16_bit_png_file": ({}, {"input.label_map_file": encoded(Image.fromarray(IDS.astype(np.uint16)))}, None),
    "labels_grey_rgb": ({}, {"input.label_map_u8": torch.from_numpy(np.repeat(IDS[..., None], 3, axis=-1))}, None),
    "labels_rgb_coded": ({}, {"input.label_map_u8": torch.from_numpy(rgb_coded(PACKED))},
                         [packed_id(PACKED[label]) for label in sorted(PACKED)]),
    "labels_rgb_coded_png_file": ({}, {"input.label_map_file": encoded(Image.fromarray(rgb_coded(PACKED)))},
                                  [packed_id(PACKED[label]) for label in sorted(PACKED)]),
}


def write_vector(folder: Path, name: str, scene: dict, labels: dict, label_ids: list[int] | None) -> Path:
    """The stored vector with its inputs replaced by ``scene`` and ``labels`` (and its expected ids, when the
    encoding changes them)."""
    tensors = {key: value for key, value in STORED.items() if not key.startswith("input.")}
    tensors.update(scene or {"input.scene_rgb_u8": STORED["input.scene_rgb_u8"]})
    tensors.update(labels or {"input.label_map_u8": STORED["input.label_map_u8"]})
    if label_ids is not None:
        tensors["output.label_ids"] = torch.tensor(label_ids, dtype=torch.int32)
    path = folder / f"{name}.safetensors"
    save_file(tensors, str(path), metadata={"case": "preprocess"})
    path.with_suffix(".json").write_text((PARITY / "preprocess.json").read_text())
    return path


@pytest.fixture(scope="module")
def vectors(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("preprocess-encodings")
    return {name: write_vector(folder, name, *encoding) for name, encoding in ENCODINGS.items()}


def test_every_encoding_of_the_preprocessing_vector_passes_through_the_cli(vectors):
    proc = subprocess.run([sys.executable, "-m", "iscene_server.cli", "parity", *map(str, vectors.values())],
                          capture_output=True, text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(lines) == len(vectors)
    for line, (name, path) in zip(lines, vectors.items(), strict=True):
        assert line.startswith(f"PASS preprocess {path} "), (name, line)


def test_transparent_object_pixels_are_blacked_out_as_the_product_does(tmp_path):
    """Alpha is honoured, not dropped: an object made transparent is black to the model, so the stored slot
    images (of the opaque scene) no longer match, while what comes from the label map alone (ids, crop boxes)
    still does."""
    alpha = np.where(IDS == 9, 0, 255)
    path = write_vector(tmp_path, "transparent_object", {"input.scene_rgb_u8": torch.from_numpy(rgba(alpha))}, {},
                        None)
    result = run_file(path)
    failed = {check.name for check in result.checks if not check.passed}
    assert not result.passed and not result.error
    assert "output.instance1.cond_sub4" in failed
    assert not any(name.endswith(("label_ids", "crop_boxes")) for name in failed), failed


def test_a_packing_that_ignored_blue_would_fail(tmp_path):
    """The RGB-coded ids are R + G·256 + B·65536: expecting them without the blue term fails on the ids."""
    wrong = [r + g * 256 for r, g, _ in (PACKED[label] for label in sorted(PACKED))]
    path = write_vector(tmp_path, "wrong_ids", {}, {"input.label_map_u8": torch.from_numpy(rgb_coded(PACKED))}, wrong)
    result = run_file(path)
    assert {check.name for check in result.checks if not check.passed} == {"output.label_ids"}


def test_a_layout_that_is_no_image_is_a_clear_error(tmp_path):
    floats = {"input.label_map_u8": torch.from_numpy(IDS.astype(np.float32))}
    result = run_file(write_vector(tmp_path, "float_ids", {}, floats, None))
    assert not result.passed and "not an image layout" in result.error and "uint16 [H, W]" in result.error


def test_ids_beyond_16_bits_must_be_rgb_coded():
    with pytest.raises(ValueError, match="RGB-coded"):
        png_bytes(np.full((4, 4), 70_000, dtype=np.int32), "input.label_map_u8")
