"""Every kind of GLB the server writes passes the Khronos glTF validator (npm ``gltf-validator``, installed in
``tests/gltf_validator`` by ``npm ci``): baked and vertex-coloured instances, with and without ``COLOR_0`` and
normals, proxies, merged scenes, and the files of a real generate job."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trimesh

from iscene_server.geometry.glb_reader import read_glb
from iscene_server.geometry.glb_writer import GlbBuilder, write_instance_glb, write_scene_glb
from iscene_server.geometry.postprocess import ColoredMesh, decimate
from iscene_server.geometry.proxy import proxy_mesh
from iscene_server.geometry.texture.bake import bake_texture

VALIDATOR = Path(__file__).parent / "gltf_validator"
MODELS = {"iscene": "tiny"}


def validator_reports(paths: list[Path]) -> dict[str, dict]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: install Node.js, then run `npm ci --prefix tests/gltf_validator`")
    if not (VALIDATOR / "node_modules" / "gltf-validator").is_dir():
        pytest.fail("the glTF validator is not installed: run `npm ci --prefix tests/gltf_validator`")
    done = subprocess.run([node, str(VALIDATOR / "validate.js"), *map(str, paths)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_valid(paths: list[Path]) -> None:
    reports = validator_reports(paths)
    assert sorted(reports) == sorted(map(str, paths))
    problems = {Path(path).name: report["messages"] for path, report in reports.items()
                if report["errors"] or report["warnings"]}
    assert not problems, json.dumps(problems, indent=1)


@pytest.fixture(scope="module")
def meshes():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.2)
    dense = ColoredMesh(sphere.vertices, sphere.faces, np.clip(sphere.vertices + 0.5, 0, 1))
    return dense, bake_texture(decimate(dense, 600), dense, 512)


def attributes_of(path: Path) -> dict:
    """The vertex attributes of the first primitive of the GLB at ``path``."""
    return read_glb(path.read_bytes())[0]["meshes"][0]["primitives"][0]["attributes"]


def test_every_kind_of_written_glb_passes_the_validator(tmp_path, meshes):
    dense, baked = meshes
    coords = np.argwhere(np.ones((4, 4, 4), bool)) + 30
    files = [
        write_instance_glb(tmp_path / "instance_1.glb", baked, label=1, seed=1, model_ids=MODELS),  # no COLOR_0
        write_instance_glb(tmp_path / "instance_2.glb", baked, label=2, seed=2, model_ids=MODELS,
                           vertex_colors=True),
        write_instance_glb(tmp_path / "instance_3.glb", dense, label=3, seed=3, model_ids=MODELS),
        write_instance_glb(tmp_path / "proxy_4.glb", proxy_mesh(coords), label=4, seed=4, model_ids=MODELS,
                           extras={"proxy": True}, normals=False),
    ]
    scene = write_scene_glb(tmp_path / "scene.glb", files[:3])
    colour_sets = [attributes_of(path) for path in files[:3]]
    assert ["COLOR_0" in attributes for attributes in colour_sets] == [False, True, True]
    assert_valid([*files, scene])


def test_a_generate_jobs_files_pass_the_validator(generated_scene):
    files = sorted(generated_scene.glob("*.glb"))
    names = {path.name for path in files}
    assert "scene.glb" in names and any(n.startswith("instance_") for n in names)
    assert any(n.startswith("proxy_") for n in names)
    assert_valid(files)


def test_the_validator_reports_a_broken_file(tmp_path, meshes):
    """The check above can fail: a textured GLB whose POSITION bounds are wrong is reported."""
    path = write_instance_glb(tmp_path / "instance_1.glb", meshes[1], label=1, seed=1, model_ids=MODELS)
    document, binary = read_glb(path.read_bytes())
    document["accessors"][0]["max"] = [9.0, 9.0, 9.0]
    builder = GlbBuilder()
    builder.gltf = document
    builder.append_binary(binary)
    broken = tmp_path / "broken.glb"
    broken.write_bytes(builder.to_bytes())
    report = validator_reports([broken])[str(broken)]
    assert report["errors"] and any("ACCESSOR_MAX_MISMATCH" in m for m in report["messages"])
