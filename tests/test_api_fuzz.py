"""Property-based fuzzing of the live server from its own OpenAPI schema: no input may cause a 5xx, and every
response must match the documented status codes, content types and schemas."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import FAST
from server_process import ServerProcess

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis is a test dependency")
def test_schema_fuzzing_finds_no_server_errors(tiny_package, tmp_path, small_scene):
    # Valid regenerate/refine bodies are easy to generate and each queues a job: with the default queue limit
    # the run would (rightly) end in 503 "queue full", which is overload, not input handling.
    server = ServerProcess(tiny_package, tmp_path / "data", "--max-queue", "100000").start()
    try:
        _, created = server.submit(*small_scene, {**FAST, "labels": [1]})
        assert server.wait(created["job_id"])["state"] == "succeeded"
        config = tmp_path / "schemathesis.toml"
        config.write_text(f'[parameters]\njob_id = "{created["job_id"]}"\n')  # so job routes see a real job too
        run = subprocess.run(["schemathesis", "--config-file", str(config), "run", f"{server.url}/openapi.json",
                              "--checks", CHECKS, "--max-examples", "25", "--seed", "7", "--request-timeout", "60"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-4000:]
        assert "passed" in run.stdout
        assert server.get("/v1/health")["state"] == "ready"
    finally:
        server.stop()
