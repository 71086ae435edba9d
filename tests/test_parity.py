"""`iscene-server parity` reproduces every reference vector, and reports failures honestly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PARITY
from safetensors.torch import load_file, save_file

from iscene_server.parity.precision import NETWORK_ROUNDOFFS, SAMPLER_ROUNDOFFS, UNIT_ROUNDOFF

STAGE1_CASES = {"dinov2", "imgcond9", "ss_flow", "ss_flow_p2", "ss_sc_flow", "ss_sc_flow_global", "ss_decoder",
                "ss_encoder", "sampler", "sampler_sc", "sampler_sc_global", "preprocess"}


def run_parity(*args: Path | str) -> subprocess.CompletedProcess:
    """``iscene-server parity`` on vector files (and options)."""
    return subprocess.run([sys.executable, "-m", "iscene_server.cli", "parity", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_every_vector_passes_through_the_cli():
    files = sorted(PARITY.glob("*.safetensors"))
    cases = {json.loads(f.with_suffix(".json").read_text())["case"] for f in files}
    assert cases >= STAGE1_CASES, f"fixtures lack {STAGE1_CASES - cases}"
    proc = run_parity(*files)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(lines) == len(files)
    for line, path in zip(lines, files, strict=True):
        assert line.startswith("PASS "), line
        assert str(path) in line and "max_abs=" in line and "max_rel=" in line


def _copy_vector(tmp_path: Path, case: str) -> Path:
    for suffix in (".safetensors", ".json"):
        shutil.copy(PARITY / f"{case}{suffix}", tmp_path / f"{case}{suffix}")
    return tmp_path / f"{case}.safetensors"


def test_a_wrong_output_fails_and_names_it(tmp_path):
    path = _copy_vector(tmp_path, "ss_flow")
    tensors = load_file(str(path))
    tensors["output.v"][0, 0, 0, 0, 0] += 1e-2
    save_file(tensors, str(path), metadata={"case": "ss_flow"})
    proc = run_parity(path)
    assert proc.returncode == 1
    assert proc.stdout.startswith("FAIL ss_flow") and "output.v" in proc.stdout


def test_unknown_case_fails(tmp_path):
    path = _copy_vector(tmp_path, "ss_flow")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["case"] = "no_such_network"
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    proc = run_parity(path)
    assert proc.returncode == 1
    assert "FAIL no_such_network" in proc.stdout and "unknown case" in proc.stdout


def test_weights_that_do_not_fit_fail_with_the_key(tmp_path):
    path = _copy_vector(tmp_path, "ss_decoder")
    tensors = load_file(str(path))
    del tensors["state_dict.out_layer.2.bias"]
    save_file(tensors, str(path), metadata={"case": "ss_decoder"})
    proc = run_parity(path)
    assert proc.returncode == 1
    assert "out_layer.2.bias" in proc.stdout and "expected shape [1]" in proc.stdout


def test_missing_sidecar_fails(tmp_path):
    path = _copy_vector(tmp_path, "ss_flow")
    path.with_suffix(".json").unlink()
    proc = run_parity(path)
    assert proc.returncode == 1 and "sidecar" in proc.stdout


def _max_rel(line: str) -> float:
    return float(line.split("max_rel=")[1].split()[0])


def test_bfloat16_torsos_pass_at_their_stated_tolerance_and_really_run_in_bfloat16():
    """The CUDA half-precision check, run on the CPU: the torso really is bfloat16 (differences far above
    float32's) and stays within the stated tolerance, 16 unit roundoffs of the outputs' scale."""
    files = [PARITY / f"{case}.safetensors" for case in ("ss_flow", "slat_flow", "sampler", "ss_decoder")]
    proc = run_parity(*files, "--device", "cpu", "--dtype", "bfloat16")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "parity on cpu bfloat16" in proc.stderr
    u = UNIT_ROUNDOFF[torch.bfloat16]
    for line in proc.stdout.strip().splitlines():
        assert line.startswith("PASS "), line
        limit = (SAMPLER_ROUNDOFFS if " sampler " in line else NETWORK_ROUNDOFFS) * u
        assert u / 10 < _max_rel(line) <= limit, line  # float32 differs by ~1e-6 here


def test_float16_on_the_cpu_matches_too():
    proc = run_parity(PARITY / "ss_sc_flow_global.safetensors", "--dtype", "float16")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 1e-4 < _max_rel(proc.stdout) <= NETWORK_ROUNDOFFS * UNIT_ROUNDOFF[torch.float16], proc.stdout


def test_half_precision_still_catches_a_wrong_output(tmp_path):
    """A difference of a tenth of the output's scale in one element is a bug, not rounding, in bfloat16 too."""
    path = _copy_vector(tmp_path, "ss_flow")
    tensors = load_file(str(path))
    tensors["output.v"][0, 0, 0, 0, 0] += 0.1 * tensors["output.v"].abs().max()
    save_file(tensors, str(path), metadata={"case": "ss_flow"})
    proc = run_parity(path, "--dtype", "bfloat16")
    assert proc.returncode == 1
    assert proc.stdout.startswith("FAIL ss_flow") and "output.v" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    proc = run_parity(PARITY / "ss_flow.safetensors", "--device", "cuda", "--dtype", "float16")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: CUDA was requested" in proc.stderr and "hint: " in proc.stderr
