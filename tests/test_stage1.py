"""Stage 1 end to end: image + label map -> per-instance occupancy, deterministic, scene slot computed once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from iscene_server.engine.pipeline import STAGE1_PLAN, Stage1Request
from iscene_server.engine.preprocess import load_scene
from iscene_server.engine.progress import ProgressTracker
from iscene_server.engine.samplers import FlowEulerSampler
from iscene_server.engine.stage1 import DECODE_BATCH, Stage1, slot_noise
from iscene_server.errors import Cancelled

STEPS = 3


@pytest.fixture(scope="module")
def scene(scene_files):
    return load_scene(*scene_files)


@pytest.fixture(scope="module")
def baseline(pipeline, scene):
    return pipeline.stage1(scene, Stage1Request(seed=42, steps=STEPS))


def test_cli_writes_occupancy_and_a_matching_summary(tiny_package, scene_files, tmp_path):
    image, labels = scene_files
    proc = subprocess.run([sys.executable, "-m", "iscene_server.cli", "generate", "--model", str(tiny_package),
                           "--image", str(image), "--labels", str(labels), "--out", str(tmp_path), "--stage", "1",
                           "--steps", str(STEPS), "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "stage1 3/3" in proc.stderr and "done" in proc.stderr  # the progress bar
    summary = json.loads((tmp_path / "scene.json").read_text())
    arrays = np.load(tmp_path / "structure.npz")
    assert summary["stages"] == 1 and summary["stage"] == "layout" and summary["camera"] is not None
    assert [i["label"] for i in summary["instances"]] == [5, 9, 200]
    # a layout: a light proxy per object, no meshes (the same files a layout job of the server writes)
    assert sorted(p.name for p in tmp_path.glob("*.glb")) == ["proxy_200.glb", "proxy_5.glb", "proxy_9.glb"]
    assert all(i["proxy"] == f"proxy_{i['label']}.glb" and i["file"] is None for i in summary["instances"])
    assert "proxy_" in proc.stdout
    assert summary["frame"]["crop_box"] == [27.0, -58.0, 663.0, 578.0]
    assert summary["frame"]["image_size"] == [640, 480]
    stage1 = summary["sampler"]["stage1"]
    assert stage1["steps"] == STEPS and stage1["cfg_strength"] == 3.0
    assert arrays["scene_latent"].shape == (8, 16, 16, 16)
    for inst in summary["instances"]:
        coords = arrays[f"coords_{inst['label']}"]
        assert coords.shape == (inst["voxels"], 3) and inst["voxels"] > 0
        assert coords.min() >= 0 and coords.max() < 64
        assert arrays[f"latent_{inst['label']}"].shape == (8, 16, 16, 16)
        lo, hi = np.array(inst["bbox"]["min"]), np.array(inst["bbox"]["max"])
        assert np.allclose(lo, coords.min(0) / 64 - 0.5) and np.allclose(hi, (coords.max(0) + 1) / 64 - 0.5)


def test_same_seed_same_result(pipeline, scene, baseline):
    again = pipeline.stage1(scene, Stage1Request(seed=42, steps=STEPS))
    for a, b in zip(baseline.structure.instances, again.structure.instances, strict=True):
        assert torch.equal(a.latent, b.latent) and np.array_equal(a.coords, b.coords)


def test_shared_scene_slot_equals_the_per_instance_reference(pipeline, scene, baseline):
    """The reference denoises [scene-space instance, scene] for every instance with a repeated noise draw."""
    scene_cond, instance_cond = pipeline.conditions(baseline.slots)
    denoiser = pipeline.models.get("denoiser")
    count = len(baseline.slots.label_ids)
    noise = slot_noise(42, 2, 8, 16)[None].repeat(count, 1, 1, 1, 1, 1)
    cond = torch.stack([instance_cond[:, 0], scene_cond[None].expand(count, -1, -1)], dim=1)
    settings = pipeline.package.sampler("sparse_structure_sampler", steps=STEPS)
    reference = FlowEulerSampler(settings.sigma_min).sample(
        denoiser, noise, cond, torch.zeros_like(cond), steps=STEPS, rescale_t=settings.rescale_t,
        guidance=settings.guidance).samples
    ours = torch.stack([inst.latent for inst in baseline.structure.instances])
    torch.testing.assert_close(ours, reference[:, 0], atol=1e-5, rtol=1e-5)
    for k in range(count):
        torch.testing.assert_close(baseline.structure.scene_latent, reference[k, 1], atol=1e-5, rtol=1e-5)


def test_reseeding_one_instance_leaves_the_others_identical(pipeline, scene, baseline):
    result = pipeline.stage1(scene, Stage1Request(seed=42, seeds={9: 7}, steps=STEPS))
    before = {i.label: i for i in baseline.structure.instances}
    after = {i.label: i for i in result.structure.instances}
    assert after[9].seed == 7 and not torch.equal(after[9].latent, before[9].latent)
    for label in (5, 200):
        assert torch.equal(after[label].latent, before[label].latent)
        assert np.array_equal(after[label].coords, before[label].coords)
    assert torch.equal(result.structure.scene_latent, baseline.structure.scene_latent)


def test_a_subset_in_the_parent_frame_matches_the_full_run(pipeline, scene, baseline):
    result = pipeline.stage1(scene, Stage1Request(seed=42, labels=[200], steps=STEPS,
                                                  scene_box=baseline.slots.scene_box))
    assert [i.label for i in result.structure.instances] == [200]
    torch.testing.assert_close(result.structure.instances[0].latent, baseline.structure.instances[2].latent,
                               atol=1e-5, rtol=1e-5)


def test_progress_reports_every_step_and_cancel_stops_before_the_next_step(pipeline, scene):
    """The cancel comes with step 1's progress report: the denoiser never runs again and no step is reported."""
    cancel = threading.Event()
    updates, evaluations, evaluations_at_cancel = [], [], []

    def listener(update):
        updates.append(update)
        if update.stage == "stage1" and update.step == 1:
            evaluations_at_cancel.append(len(evaluations))
            cancel.set()

    handle = pipeline.models.get("denoiser").out_layer.register_forward_hook(lambda *_: evaluations.append(1))
    try:
        with pytest.raises(Cancelled):
            pipeline.stage1(scene, Stage1Request(steps=STEPS), ProgressTracker(STAGE1_PLAN, listener, cancel))
    finally:
        handle.remove()
    assert evaluations_at_cancel[0] > 0 and len(evaluations) == evaluations_at_cancel[0]
    stages = [(u.stage, u.step) for u in updates]
    assert stages == [("preprocess", 0), ("condition", 0), ("stage1", 0), ("stage1", 1)]
    assert all(0 <= u.fraction <= 1 for u in updates) and updates[-1].eta_s is not None


def test_seeded_noise_is_the_reference_draw():
    torch.manual_seed(1234)
    expected = torch.randn(1, 2, 8, 4, 4, 4)[0]
    assert torch.equal(slot_noise(1234, 2, 8, 4), expected)


def test_batched_decoding_equals_decoding_each_latent_alone(pipeline, baseline):
    """Five latents cross a decoding batch boundary (DECODE_BATCH = 4): each one's occupancy is the one it has
    when decoded on its own, whatever its place in the batch."""
    stage1 = Stage1(pipeline.models.get("denoiser"), pipeline.models.get("sparse_structure_decoder"),
                    pipeline.package.sampler("sparse_structure_sampler"), torch.device("cpu"))
    sampled = torch.stack([inst.latent for inst in baseline.structure.instances])  # [3, C, r, r, r]
    latents = torch.cat([sampled, sampled[:2].flip(0) * 1.5])  # [5, C, r, r, r]: five different occupancies
    assert latents.shape[0] > DECODE_BATCH
    together = stage1.decode(latents)
    alone = [stage1.decode(latents[i:i + 1])[0] for i in range(len(latents))]
    for ours, reference in zip(together, alone, strict=True):
        assert len(reference) > 0 and np.array_equal(ours, reference)
    assert len({c.tobytes() for c in alone}) == len(alone)  # a mix-up between batch items would show
