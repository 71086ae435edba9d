"""The command line as a user meets it: the README demo, and clear errors instead of tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import without_transformers
from PIL import Image

from iscene_server.geometry.glb_reader import read_accessor, read_glb

EXAMPLES = Path(__file__).parents[1] / "examples"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iscene_server.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


README = Path(__file__).parents[1] / "README.md"
DEMO_PATHS = ("models/tiny", "results/demo")  # the only words of the README's command the test changes


def readme_demo_commands() -> list[list[str]]:
    """The ``iscene-server`` commands of the README's set-up line, exactly as written there."""
    line = next(line for line in README.read_text().splitlines() if "iscene-server generate" in line)
    commands = [part.split() for part in line.strip().split("&&")]
    return [command[1:] for command in commands if command[0] == "iscene-server"]


def meshes_of(glb: bytes) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(label, positions, UVs, indices) of every node of a GLB (baked: no COLOR_0 by default), in node order."""
    gltf, binary = read_glb(glb)
    meshes = []
    for node in gltf["nodes"]:
        primitive = gltf["meshes"][node["mesh"]]["primitives"][0]
        meshes.append((node["extras"]["label"],
                       *(read_accessor(gltf, binary, primitive["attributes"][key])
                         for key in ("POSITION", "TEXCOORD_0")),
                       read_accessor(gltf, binary, primitive["indices"])))
    return meshes


def test_readme_demo_on_the_example_render(tmp_path):
    """The README's set-up command, as written (the model and output folders moved into the test's folder),
    writes every file the README's Outputs table promises."""
    package, out = tmp_path / "tiny", tmp_path / "demo"
    commands = readme_demo_commands()
    assert [command[0] for command in commands] == ["make-tiny-package", "generate"]
    for command in commands:
        args = [{"models/tiny": str(package), "results/demo": str(out)}.get(arg, arg) for arg in command]
        assert args != command, f"the README's {command[0]} no longer writes into {' or '.join(DEMO_PATHS)}"
        proc = subprocess.run([sys.executable, "-m", "iscene_server.cli", *args], capture_output=True, text=True,
                              timeout=900, cwd=README.parent)
        assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "scene.json").read_text())
    labels = [entry["label"] for entry in manifest["instances"]]
    assert labels == [1, 2, 3, 4, 5] and manifest["models"]["model_name"] == "IScene-tiny"
    assert manifest["camera"] and manifest["frame"]["crop_box"]
    with np.load(out / "structure.npz") as structure:
        for entry in manifest["instances"]:
            coords = structure[f"coords_{entry['label']}"]
            assert coords.dtype == np.int16 and coords.shape == (entry["voxels"], 3) and entry["voxels"] > 0
            assert coords.min() >= 0 and coords.max() < 64
    whole_scene = meshes_of((out / "scene.glb").read_bytes())
    assert [mesh[0] for mesh in whole_scene] == labels
    for entry, in_scene in zip(manifest["instances"], whole_scene, strict=True):
        assert entry["file"] == f"instance_{entry['label']}.glb"
        (label, positions, uvs, indices), = meshes_of((out / entry["file"]).read_bytes())
        assert label == entry["label"] and len(indices) == 3 * entry["faces"] > 0
        assert len(positions) == len(uvs) == entry["vertices"]
        for ours, theirs in zip((positions, uvs, indices), in_scene[1:], strict=True):
            assert np.array_equal(ours, theirs), f"scene.glb holds instance {label}'s geometry byte for byte"


def _assert_clear_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith("error: ") for line in lines) and any(line.startswith("hint: ") for line in lines)
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_missing_image_is_a_clear_error(tiny_package, tmp_path):
    proc = cli("generate", "--model", str(tiny_package), "--image", str(tmp_path / "nope.png"),
               "--labels", str(EXAMPLES / "living_room_labels.png"), "--out", str(tmp_path / "out"))
    _assert_clear_error(proc, "nope.png", "does not exist")


def test_empty_label_map_is_a_clear_error(tiny_package, tmp_path):
    labels = tmp_path / "labels.png"
    Image.fromarray(np.zeros((480, 640), np.uint8)).save(labels)
    proc = cli("generate", "--model", str(tiny_package), "--image", str(EXAMPLES / "living_room.png"),
               "--labels", str(labels), "--out", str(tmp_path / "out"))
    _assert_clear_error(proc, "no instances")
    assert not (tmp_path / "out").exists()


def test_wrong_model_folder_is_a_clear_error(tmp_path):
    proc = cli("generate", "--model", str(tmp_path), "--image", str(EXAMPLES / "living_room.png"),
               "--labels", str(EXAMPLES / "living_room_labels.png"), "--out", str(tmp_path / "out"))
    _assert_clear_error(proc, "not an I-Scene model package")


def test_unknown_label_subset_is_a_clear_error(tiny_package, tmp_path):
    proc = cli("generate", "--model", str(tiny_package), "--image", str(EXAMPLES / "living_room.png"),
               "--labels", str(EXAMPLES / "living_room_labels.png"), "--out", str(tmp_path / "out"),
               "--only", "42")
    _assert_clear_error(proc, "42")


def test_segment_writes_a_palette_label_map_and_its_segments(tiny_package, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"objects": [{"box": [100, 200, 500, 450]}, {"points": [[600, 300]]}]}))
    out = tmp_path / "out" / "labels.png"
    proc = cli("segment", "--image", str(EXAMPLES / "living_room.png"), "--prompts", str(prompts), "--out", str(out),
               "--segment-model", str(tiny_package / "sam"), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(out.with_suffix(".json").read_text())
    labels = Image.open(out)
    assert labels.mode == "P" and labels.size == Image.open(EXAMPLES / "living_room.png").size
    assert info["mode"] == "prompts" and len(info["segments"]) + len(info["dropped"]) == 2
    assert sorted(np.unique(np.array(labels)))[-1] == len(info["segments"])
    assert f"segment 1 (prompt {info['segments'][0]['prompt']})" in proc.stdout


def test_segment_prompts_outside_the_image_are_a_clear_error(tiny_package, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"objects": [{"points": [[5000, 10]]}]}))
    proc = cli("segment", "--image", str(EXAMPLES / "living_room.png"), "--prompts", str(prompts),
               "--out", str(tmp_path / "labels.png"), "--segment-model", str(tiny_package / "sam"))
    _assert_clear_error(proc, "outside the 640×480 image")
    assert not (tmp_path / "labels.png").exists()


def test_make_tiny_package_without_the_segment_extra_leaves_out_sam(tmp_path):
    proc = cli("make-tiny-package", str(tmp_path / "tiny"), env=without_transformers(tmp_path / "site"))
    assert proc.returncode == 0, proc.stderr
    assert "note: no sam/" in proc.stdout and "pip install iscene-server[segment]" in proc.stdout
    assert (tmp_path / "tiny" / "iscene_config.json").is_file() and not (tmp_path / "tiny" / "sam").exists()
