"""The whole scene: image + label map -> one GLB per instance, scene.glb, scene.json (and PLYs)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from iscene_server.engine.pipeline import ScenePipeline, Stage1Request
from iscene_server.engine.preprocess import load_scene
from iscene_server.engine.stage2 import Stage2

EXAMPLES = Path(__file__).parents[1] / "examples"
IMAGE, LABELS = EXAMPLES / "living_room.png", EXAMPLES / "living_room_labels.png"
FAST = ["--steps", "2", "--slat-steps", "2", "--device", "cpu"]


def generate(package: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "iscene_server.cli", "generate", "--model", str(package),
                           "--image", str(IMAGE), "--labels", str(LABELS), "--out", str(out), *FAST, *extra],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def scene_dir(tiny_package, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scene")
    proc = generate(tiny_package, out, "--formats", "mesh", "gaussian", "--target-faces", "4000")
    assert "stage2 2/2" in proc.stderr and "meshes 5/5" in proc.stderr
    return out


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_manifest_matches_the_files(scene_dir):
    manifest = json.loads((scene_dir / "scene.json").read_text())
    assert manifest["stages"] == 2 and manifest["files"] == {"scene": "scene.glb", "structure": "structure.npz"}
    assert [e["label"] for e in manifest["instances"]] == [1, 2, 3, 4, 5]
    assert manifest["mesh_frame"]["variant"] == "iscene" and manifest["mesh_frame"]["flexicubes_res"] == 320
    for entry in manifest["instances"]:
        (mesh,) = trimesh.load(scene_dir / entry["file"], process=False).geometry.values()
        assert (len(mesh.vertices), len(mesh.faces)) == (entry["vertices"], entry["faces"])
        assert 0 < entry["faces"] <= 4000 < entry["extracted_faces"]
        assert mesh.visual.vertex_attributes["color"].shape[0] == entry["vertices"]
        vertices_s = np.asarray(mesh.vertices) @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])  # glTF y-up -> S
        np.testing.assert_allclose(vertices_s.min(0), entry["bbox"]["min"], atol=1e-5)
        np.testing.assert_allclose(vertices_s.max(0), entry["bbox"]["max"], atol=1e-5)
        lo, hi = np.array(entry["bbox"]["min"]), np.array(entry["bbox"]["max"])
        np.testing.assert_allclose(entry["bbox"]["origin"], [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
        ply = (scene_dir / entry["ply"]).read_bytes()
        assert ply.startswith(b"ply\nformat binary_little_endian 1.0\n")
        assert f"element vertex {entry['voxels'] * 32}".encode() in ply  # 32 Gaussians per voxel
    scene = trimesh.load(scene_dir / "scene.glb", process=False)
    assert sorted(scene.geometry) == [f"instance_{i}" for i in range(1, 6)]


BLENDER = textwrap.dedent("""
    import json, sys, bpy
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=sys.argv[1])
    print("RESULT" + json.dumps({o.name: {"colours": [a.name for a in o.data.color_attributes],
                                           "faces": len(o.data.polygons), "label": o.get("label")}
                                 for o in bpy.data.objects}))
""")


def test_blender_imports_one_object_per_instance_with_vertex_colours(scene_dir):
    run = subprocess.run([sys.executable, "-c", BLENDER, str(scene_dir / "scene.glb")], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    objects = json.loads(next(l for l in run.stdout.splitlines() if l.startswith("RESULT"))[6:])
    manifest = json.loads((scene_dir / "scene.json").read_text())
    assert sorted(objects) == [f"instance_{e['label']}" for e in manifest["instances"]]
    for entry in manifest["instances"]:
        obj = objects[f"instance_{entry['label']}"]
        assert obj["colours"] and obj["faces"] == entry["faces"] and obj["label"] == entry["label"]


def test_regenerating_one_instance_leaves_every_other_file_byte_identical(tiny_package, scene_dir, tmp_path):
    folder = tmp_path / "scene"
    shutil.copytree(scene_dir, folder)
    before = digests(folder)
    generate(tiny_package, folder, "--formats", "mesh", "gaussian", "--target-faces", "4000", "--only", "3",
             "--instance-seed", "3=777")
    after = digests(folder)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"instance_3.glb", "instance_3.ply", "scene.glb", "scene.json", "structure.npz"}
    manifest = json.loads((folder / "scene.json").read_text())
    old = json.loads((scene_dir / "scene.json").read_text())
    assert manifest["frame"] == old["frame"] and manifest["scene_seed"] == old["scene_seed"]
    entries = {e["label"]: e for e in manifest["instances"]}
    assert entries[3]["seed"] == 777
    assert [e for e in manifest["instances"] if e["label"] != 3] == [e for e in old["instances"] if e["label"] != 3]
    with np.load(folder / "structure.npz") as new, np.load(scene_dir / "structure.npz") as original:
        assert np.array_equal(new["coords_5"], original["coords_5"])
        assert not np.array_equal(new["latent_3"], original["latent_3"])
    assert len(trimesh.load(folder / "scene.glb", process=False).geometry) == 5


def test_a_folder_of_another_scene_is_refused(tiny_package, scene_dir, tmp_path):
    folder = tmp_path / "scene"
    shutil.copytree(scene_dir, folder)
    other = tmp_path / "other.png"
    other.write_bytes(IMAGE.read_bytes() + b"\0")  # same picture, different file
    proc = subprocess.run([sys.executable, "-m", "iscene_server.cli", "generate", "--model", str(tiny_package),
                           "--image", str(other), "--labels", str(LABELS), "--out", str(folder), *FAST],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "different image or label map" in proc.stderr


@pytest.fixture(scope="module")
def pipeline(tiny_package) -> ScenePipeline:
    return ScenePipeline.from_pretrained(str(tiny_package), device="cpu")


@pytest.fixture(scope="module")
def first_stage(pipeline):
    return pipeline.stage1(load_scene(IMAGE, LABELS), Stage1Request(steps=2))


def _stage2(pipeline: ScenePipeline, grid: str = "iscene") -> Stage2:
    return Stage2(pipeline.models.get("slat_flow_model"), pipeline.models.get("slat_decoder_mesh"),
                  pipeline.package.sampler("slat_sampler", steps=2), pipeline.package.base.args["slat_normalization"],
                  torch.device("cpu"), mesh_grid=grid)


def test_stage2_instances_are_independent_of_their_batch(pipeline, first_stage):
    stage2 = _stage2(pipeline)
    instances, cond = first_stage.structure.instances, first_stage.instance_cond[:, 0]
    together = stage2.sample([i.coords for i in instances[:3]], cond[:3], [1, 2, 3], 2)
    for index in range(3):
        alone = stage2.sample([instances[index].coords], cond[index:index + 1], [index + 1], 2)
        torch.testing.assert_close(together[index].feats, alone.feats, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", ["iscene", "trellis"])
def test_meshes_are_returned_in_the_scene_frame(pipeline, first_stage, grid):
    """The tiny mesh head puts every corner inside, so each surface wraps the instance's stage-1 voxels."""
    stage2 = _stage2(pipeline, grid)
    inst = first_stage.structure.instances[0]
    latents = stage2.sample([inst.coords], first_stage.instance_cond[:1, 0], [inst.seed], 2)
    mesh = stage2.decode_mesh(latents, 0)
    voxel_min, voxel_max = inst.coords.min(0) / 64 - 0.5, (inst.coords.max(0) + 1) / 64 - 0.5
    half_cell = 0.5 / 256
    np.testing.assert_allclose(mesh.vertices.min(0).values.numpy(), voxel_min, atol=2 * half_cell)
    np.testing.assert_allclose(mesh.vertices.max(0).values.numpy(), voxel_max, atol=2 * half_cell)


# ---- the CPU work beside the GPU -----------------------------------------------------------------

TWO_OBJECTS = dict(steps=1, slat_steps=1, target_faces=2000, labels=[1, 2])


@pytest.fixture(scope="module")
def two_object_scenes(pipeline):
    """The same request through the worker pool and inline (``cleanup_workers=0``, the serial path)."""
    from iscene_server.engine.pipeline import GenerationRequest

    scene = load_scene(IMAGE, LABELS)
    pooled = pipeline.generate(scene, GenerationRequest(**TWO_OBJECTS))
    with ScenePipeline(pipeline.models, cleanup_workers=0) as serial:
        inline = serial.generate(scene, GenerationRequest(**TWO_OBJECTS))
    return scene, pooled, inline


def test_pooled_meshes_and_camera_are_byte_identical_to_the_serial_path(pipeline, two_object_scenes):
    from iscene_server.engine.camera.solve import solve_camera

    scene, pooled, inline = two_object_scenes
    assert pipeline.workers.workers >= 1
    for a, b in zip(pooled.instances, inline.instances, strict=True):
        assert a.label == b.label and a.extracted_faces == b.extracted_faces > a.mesh.face_count
        for name in ("vertices", "faces", "colors"):
            assert getattr(a.mesh, name).tobytes() == getattr(b.mesh, name).tobytes()
    voxels = {i.label: i.structure.coords for i in pooled.instances}
    direct = solve_camera(voxels, scene.ids, pooled.slots.scene_box)
    assert pooled.camera.to_dict() == inline.camera.to_dict() == direct.to_dict()


def test_timings_cover_every_stage_and_the_gpu_end_is_stamped(two_object_scenes):
    _, pooled, _ = two_object_scenes
    assert set(pooled.timings) == {"preprocess", "condition", "stage1", "decode", "camera", "stage2",
                                   "mesh_decoder", "extraction", "mesh_cleanup"}
    assert all(seconds > 0 for seconds in pooled.timings.values())
    assert pooled.gpu_finished_at is not None and pooled.gpu_finished_at < time.perf_counter()


def test_cancel_inside_the_mesh_decoder_stops_before_its_next_block(pipeline, monkeypatch):
    """The cancel arrives while block 0 of the first object's decoder runs: block 1 never runs, no other
    object is decoded, nothing is cleaned up, and the job raises Cancelled."""
    import threading

    from iscene_server.engine.pipeline import GENERATE_PLAN, GenerationRequest
    from iscene_server.engine.progress import ProgressTracker
    from iscene_server.errors import Cancelled

    decoder = pipeline.models.get("slat_decoder_mesh")
    cancel, ran, submitted = threading.Event(), [], []
    real_submit = pipeline.workers.submit
    monkeypatch.setattr(pipeline.workers, "submit", lambda fn, *args: submitted.append(fn.__name__) or
                        real_submit(fn, *args))
    handles = [block.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, block in enumerate(decoder.blocks)]
    handles.append(decoder.blocks[0].register_forward_hook(lambda *_: cancel.set()))
    try:
        with pytest.raises(Cancelled):
            pipeline.generate(load_scene(IMAGE, LABELS), GenerationRequest(**TWO_OBJECTS),
                              ProgressTracker(GENERATE_PLAN, cancel=cancel))
    finally:
        for handle in handles:
            handle.remove()
    assert len(decoder.blocks) > 1 and ran == [0]
    assert submitted == ["fit_camera"]  # the camera solve started with stage 2; no clean-up was submitted
    assert not decoder._forward_pre_hooks and not any(b._forward_pre_hooks for b in decoder.blocks)
