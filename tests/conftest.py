"""Shared fixtures: the tiny model package and a small example scene."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from iscene_server.engine.packages.tiny import write_tiny_package
from PIL import Image
from safetensors.numpy import load_file

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "parity"
EXAMPLES = Path(__file__).parents[1] / "examples"
FAST = {"steps": 2, "slat_steps": 2, "detail": "low"}  # server job params that keep the tiny model quick


def without_transformers(folder: Path) -> dict[str, str]:
    """Environment for a subprocess in which ``transformers`` is not importable, as without the [segment] extra.

    A ``sitecustomize`` puts None into ``sys.modules`` for it: Python's own way to make a module unimportable
    (``import`` raises ImportError and ``importlib.util.find_spec`` answers None)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text("import sys\nsys.modules['transformers'] = None\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def small_scene() -> tuple[bytes, bytes]:
    """The example render at 320x240 with two of its objects (ids 1: table, 4: plant), as PNG bytes."""
    image = Image.open(EXAMPLES / "living_room.png").convert("RGB").resize((320, 240))
    ids = np.array(Image.open(EXAMPLES / "living_room_labels.png").resize((320, 240), Image.NEAREST))
    ids[(ids != 1) & (ids != 4)] = 0
    return png(np.asarray(image)), png(ids)


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory) -> Path:
    """A freshly generated tiny I-Scene package (the same one `iscene-server make-tiny-package` writes)."""
    return write_tiny_package(tmp_path_factory.mktemp("tiny") / "iscene-tiny")


@pytest.fixture(scope="session")
def scene_files(tmp_path_factory) -> tuple[Path, Path]:
    """A 640x480 scene with three instances (ids 5, 9, 200), written as PNG files."""
    vectors = load_file(str(PARITY / "preprocess.safetensors"))
    folder = tmp_path_factory.mktemp("scene")
    image, labels = folder / "scene.png", folder / "labels.png"
    Image.fromarray(vectors["input.scene_rgb_u8"]).save(image)
    Image.fromarray(vectors["input.label_map_u8"]).save(labels)
    return image, labels


@pytest.fixture(scope="session")
def scene_arrays() -> tuple[np.ndarray, np.ndarray]:
    vectors = load_file(str(PARITY / "preprocess.safetensors"))
    return vectors["input.scene_rgb_u8"], vectors["input.label_map_u8"]


def fake_hub_repo(cache: Path, repo_id: str, files_from: Path, skip: str | None = None) -> None:
    """Lay out a Hugging Face cache entry (refs/main -> snapshots/<commit>/...) holding ``files_from``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files_from, snapshot, ignore=shutil.ignore_patterns(*(p for p in [skip] if p)))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, used offline (fill it with :func:`fake_hub_repo`)."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache
