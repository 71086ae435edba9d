"""bench/gpu_check.py, the one-command GPU check, run at tiny sizes on the CPU: it must work before a GPU is lent.

The block it prints goes into bench/RESULTS.md as is, so the test reads the block: every stage row, numbers that
add up (the wall time covers the stages that run one after another), the attention kernel, parity.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402  (a bench script, imported from its folder)

STAGE_ROWS = [label for label, _ in gpu_check.TIME_ROWS] + [
    "stage 1 s/step", "main-thread stages (sum)", "wall (generate + export)",
    "tail_s (last GPU decode -> export written)"]
TRACKER_STAGES = ["preprocess", "condition", "stage1", "decode", "stage2", "meshes", "export", "whole scene"]


def table_rows(block: str) -> dict[str, list[str]]:
    """``| name | a | b |`` rows of every markdown table in the block, by name."""
    rows = {}
    for line in block.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    figures = tmp_path_factory.mktemp("gpu_check") / "figures.json"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--json", str(figures)], capture_output=True, text=True, timeout=900,
                          cwd=BENCH.parent)
    return proc, json.loads(figures.read_text()) if figures.exists() else None


def test_the_tiny_check_passes_and_prints_every_stage(tiny_check):
    proc, figures = tiny_check
    assert proc.returncode == 0, proc.stdout + proc.stderr
    block = proc.stdout
    assert block.startswith("### GPU check, ") and block.rstrip().endswith("- result: every check passed")
    rows = table_rows(block)
    times = {}
    for label in STAGE_ROWS:
        assert label in rows, f"no row {label!r} in\n{block}"
        times[label] = float(rows[label][0])
        assert times[label] >= 0, label
    stage2_step = next(name for name in rows if name.startswith("stage 2 s/step"))
    assert float(rows[stage2_step][0]) > 0 and times["stage 1 s/step"] > 0
    wall = times["wall (generate + export)"]
    assert wall + 2e-3 >= times["main-thread stages (sum)"]
    assert sum(times[label] for label, key in gpu_check.TIME_ROWS if key in gpu_check.GPU_SERIAL) <= wall + 5e-3
    assert 0 <= times["tail_s (last GPU decode -> export written)"] <= wall
    assert times["stage 1"] > 0 and times["stage 2"] > 0 and times["mesh decoder"] > 0 and times["FlexiCubes"] > 0
    assert abs(figures["wall_s"] - wall) < 1e-3 and all(v > 0 for v in figures["voxels"])
    bake = next(name for name in rows if name.startswith("texture bake per object"))
    assert float(rows[bake][0]) > 0 and abs(figures["bake_s"] - float(rows[bake][0])) < 1e-3


def test_the_time_to_first_look_is_in_order_and_within_the_scene(tiny_check):
    proc, figures = tiny_check
    rows = table_rows(proc.stdout)
    layout = float(rows["layout ready (stage 1 + camera)"][0])
    first, whole = float(rows["first object finished"][0]), float(rows["whole scene (+ export)"][0])
    ratio = float(next(value for name, value in rows.items() if name.startswith("layout / whole scene"))[0])
    assert 0 < layout <= first <= whole
    assert ratio == pytest.approx(layout / whole, abs=2e-3)
    # the layout waits for stage 1 and its occupancy decoding at least; the scene ends after every stage
    times = {label: float(rows[label][0]) for label, _ in gpu_check.TIME_ROWS}
    assert layout >= times["stage 1"] + times["SS decode"] - 1e-3
    assert figures["first_look"]["ratio"] == pytest.approx(ratio, abs=1e-3)


def test_memory_rows_for_every_stage_the_listener_saw(tiny_check):
    proc, _ = tiny_check
    rows = table_rows(proc.stdout)
    for stage in TRACKER_STAGES:
        assert rows.get(stage) == ["n/a (CPU)", "n/a (CPU)"], stage  # VRAM figures need CUDA


def test_reference_layout_ratio_and_settings(tiny_check):
    proc, figures = tiny_check
    rows = table_rows(proc.stdout)
    ours, reference, ratio = rows["sampling s"]
    assert float(ours) > 0 and float(reference) > 0
    # printed with two decimals, from times printed with three
    assert float(ratio.rstrip("x")) == pytest.approx(float(reference) / float(ours), rel=0.02, abs=0.006)
    assert figures["settings"]["stage1"]["steps"] == 2 and figures["settings"]["stage1"]["cfg_strength"] == 3.0
    assert figures["settings"]["stage1"]["cfg_interval"] == [0.5, 1.0]


def test_attention_ran_on_a_fused_kernel_and_parity_passed(tiny_check):
    proc, figures = tiny_check
    assert "SDPA flash (CPU) x" in proc.stdout and "SDPA math" not in proc.stdout
    assert figures["attention"].get("SDPA flash (CPU)", 0) > 0
    rows = table_rows(proc.stdout)
    for case in gpu_check.TINY_PARITY_CASES:
        assert rows[case][0].startswith("PASS "), rows[case]


def test_a_math_path_or_a_failed_vector_fails_the_check():
    run = gpu_check.SceneRun(1, {"wall": 1.0}, 1.0, 0.1, None, [5], [1], [1], {}, Counter({"SDPA math": 2}))
    ok = gpu_check.SceneRun(1, {}, 1.0, 0.1, None, [5], [1], [1], {}, Counter({"SDPA flash": 4}))
    settings = gpu_check.Settings(torch.device("cpu"), torch.float32, True, 1, 1, 1, 1, [1], 1, ["float32"],
                                  [Path("ss_flow.safetensors")], False, 1.0)
    parity = [gpu_check.ParityRun("float16", 1, {"ss_flow": "FAIL 0.2"}, 1.0)]
    assert gpu_check.check_failures(ok, ok, [], settings) == []
    failures = gpu_check.check_failures(ok, run, parity, settings)
    assert any("fused kernel" in f for f in failures) and any("parity float16: ss_flow" in f for f in failures)


def test_the_profiler_tells_the_math_path_from_a_fused_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    q = torch.randn(1, 2, 64, 16)
    with sdpa_kernel([SDPBackend.MATH]), profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert gpu_check.attention_ops(prof, q.device)[0]["SDPA math"] == 1
    with gpu_check.fused_attention_only(), profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    kinds = gpu_check.attention_ops(prof, q.device)[0]
    assert kinds["SDPA flash (CPU)"] == 1 and "SDPA math" not in kinds


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_gpu_run_says_so_in_one_line():
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py")], capture_output=True, text=True,
                          timeout=300, env={**os.environ})
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device") and "--device cpu --tiny" in lines[0]
