"""Shared fixtures: the tiny model package, one loaded pipeline, one finished scene, one server, example scenes.

The session-scoped ones are built once for the whole run (they are what makes the suite fast): tests read them
and must not change them (copy a scene folder before writing into it; restore whatever they monkeypatch).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file
from server_process import ServerProcess

from iscene_server.engine.eta import GENERATE_PLAN
from iscene_server.engine.pipeline import ScenePipeline
from iscene_server.engine.progress import ProgressTracker
from iscene_server.jobs.runner import run_generate
from iscene_server.tiny.package import write_tiny_package

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
def small_scene_files(small_scene, tmp_path_factory) -> tuple[Path, Path]:
    """:func:`small_scene` written as PNG files, as an artist would pass them to the command line."""
    folder = tmp_path_factory.mktemp("small-scene")
    image, labels = folder / "living_room.png", folder / "living_room_labels.png"
    image.write_bytes(small_scene[0])
    labels.write_bytes(small_scene[1])
    return image, labels


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory) -> Path:
    """A freshly generated tiny I-Scene package (the same one `iscene-server make-tiny-package` writes)."""
    return write_tiny_package(tmp_path_factory.mktemp("tiny") / "iscene-tiny")


@pytest.fixture(scope="session")
def pipeline(tiny_package) -> ScenePipeline:
    """The tiny package loaded once on the CPU, with its clean-up workers."""
    with ScenePipeline.from_pretrained(str(tiny_package), device="cpu") as pipeline:
        yield pipeline


@pytest.fixture(scope="session")
def small_inputs(small_scene) -> dict[str, bytes]:
    """:func:`small_scene` as the job inputs a generate job receives."""
    return {"image": small_scene[0], "labels": small_scene[1]}


@pytest.fixture(scope="session")
def generated_scene(pipeline, small_inputs, tmp_path_factory) -> Path:
    """The folder of a finished generate job (the small scene, :data:`FAST`): a parent for refines."""
    folder = tmp_path_factory.mktemp("generated")
    run_generate(pipeline, folder, FAST, small_inputs, ProgressTracker(GENERATE_PLAN))
    return folder


@pytest.fixture(scope="session")
def server(tiny_package, tmp_path_factory):
    """One ``iscene-server serve`` on the tiny package for tests that only submit jobs and read their results;
    tests that change its settings, stop it or need it to hold no other job start their own."""
    process = ServerProcess(tiny_package, tmp_path_factory.mktemp("shared-server") / "data").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def finished_job(server, small_scene) -> str:
    """The id of a generate job of the small scene (:data:`FAST`) that finished on :func:`server`; read only."""
    status, created = server.submit(*small_scene, FAST)
    assert status == 202 and server.wait(created["job_id"])["state"] == "succeeded", created
    return created["job_id"]


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
