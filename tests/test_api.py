"""The HTTP API against a real `iscene-server serve` on 127.0.0.1 with the tiny package."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import FAST, png
from server_process import ServerProcess

from iscene_server.geometry.glb_reader import read_glb


@pytest.fixture(scope="module")
def scene(small_scene) -> tuple[bytes, bytes]:
    return small_scene


@pytest.fixture
def finished(finished_job) -> str:
    """A generate job of the small scene that finished on the session's shared ``server`` (conftest)."""
    return finished_job


def call(server, method: str, path: str) -> tuple[int, dict]:
    status, _, data = server.request(method, path)
    return status, json.loads(data)


def error_of(status_and_body) -> tuple[int, str]:
    status, body = status_and_body
    assert set(body["error"]) == {"code", "message", "hint"} and body["error"]["hint"], body
    return status, body["error"]["code"]


def test_health_identifies_the_service(server):
    health = server.get("/v1/health")
    assert health["service"] == "iscene" and health["api"] == "v1" and health["state"] == "ready"
    assert health["models"]["model_name"] == "IScene-tiny" and health["device"] == "cpu"
    assert health["queue_length"] == 0


def test_generate_poll_manifest_download(server, finished):
    status = server.get(f"/v1/jobs/{finished}")
    assert status["progress"] == 1.0 and status["error"] is None and status["params"]["detail"] == "low"
    manifest = server.get(f"/v1/jobs/{finished}/scene")
    assert [e["label"] for e in manifest["instances"]] == [1, 4]
    for entry in manifest["instances"]:
        code, headers, data = server.request("GET", f"/v1/jobs/{finished}/files/{entry['file']}")
        assert code == 200 and headers["content-type"] == "model/gltf-binary"
        gltf, _ = read_glb(data)
        assert gltf["nodes"][0]["extras"]["label"] == entry["label"]
    code, _, data = server.request("GET", f"/v1/jobs/{finished}/files/scene.glb")
    assert code == 200 and len(read_glb(data)[0]["nodes"]) == 2
    assert finished in [job["job_id"] for job in server.get("/v1/jobs")["jobs"]]


def test_progress_is_reported_while_running(server, scene):
    _, created = server.submit(*scene, {**FAST, "steps": 30})
    seen = set()
    deadline = time.time() + 120
    while time.time() < deadline:
        status = server.get(f"/v1/jobs/{created['job_id']}")
        if status["state"] == "running" and status["stage"]:
            seen.add((status["stage"], status["total"]))
            assert 0 <= status["progress"] <= 1
        if status["state"] == "succeeded":
            break
        time.sleep(0.05)
    assert ("stage1", 30) in seen


def test_cancel_stops_a_running_job_before_its_next_step_and_the_server_goes_on(server, scene):
    _, long = server.submit(*scene, {**FAST, "steps": 100})
    _, queued = server.submit(*scene, FAST)
    server.wait(long["job_id"], states=("running",))
    while server.get(f"/v1/jobs/{long['job_id']}")["stage"] != "stage1":
        time.sleep(0.05)
    assert server.get(f"/v1/jobs/{queued['job_id']}")["queue_position"] == 1
    status, _, body = server.request("DELETE", f"/v1/jobs/{long['job_id']}")
    at_cancel = json.loads(body)
    assert status == 200 and at_cancel["stage"] == "stage1" and at_cancel["total"] == 100
    stopped = server.wait(long["job_id"])
    assert stopped["state"] == "cancelled" and stopped["stage"] == "stage1"
    # the step that was running when the cancel came may finish; none after it starts
    assert at_cancel["step"] <= stopped["step"] <= at_cancel["step"] + 1, (at_cancel, stopped)
    assert server.wait(queued["job_id"])["state"] == "succeeded"  # the worker carried on
    assert error_of(call(server, "DELETE", f"/v1/jobs/{long['job_id']}")) == (409, "wrong_state")


def test_a_queued_job_is_cancelled_at_once(server, scene):
    _, first = server.submit(*scene, {**FAST, "steps": 40})
    _, second = server.submit(*scene, FAST)
    status, _, body = server.request("DELETE", f"/v1/jobs/{second['job_id']}")
    assert status == 200 and json.loads(body)["state"] == "cancelled"
    server.request("DELETE", f"/v1/jobs/{first['job_id']}")
    server.wait(first["job_id"])


def results_of(server, job_id: str) -> dict[str, bytes]:
    """Every result file of a finished scene job, by name."""
    manifest = server.get(f"/v1/jobs/{job_id}/scene")
    names = [entry[key] for entry in manifest["instances"] for key in ("file", "ply") if entry.get(key)]
    names += ["structure.npz"] + (["scene.glb"] if any(entry["file"] for entry in manifest["instances"]) else [])
    files = {}
    for name in names:
        status, _, data = server.request("GET", f"/v1/jobs/{job_id}/files/{name}")
        assert status == 200, name
        files[name] = data
    return files


def test_two_clients_at_once_each_get_what_the_request_gives_alone(server, scene):
    jobs = {}
    quick = {**FAST, "formats": ["gaussian"]}  # both stages, without the mesh extraction the test needs not

    def client(seed: int):
        status, created = server.submit(*scene, {**quick, "seed": seed})
        jobs[seed] = (status, server.wait(created["job_id"])["state"], created["job_id"])

    threads = [threading.Thread(target=client, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert {seed: job[:2] for seed, job in jobs.items()} == {1: (202, "succeeded"), 2: (202, "succeeded")}
    together = {seed: results_of(server, job[2]) for seed, job in jobs.items()}
    assert together[1] != together[2], "two seeds, two scenes: neither job took the other's request"
    _, alone = server.submit(*scene, {**quick, "seed": 2})
    assert server.wait(alone["job_id"])["state"] == "succeeded"
    assert results_of(server, alone["job_id"]) == together[2]


def test_regenerate_leaves_the_other_instances_files_identical(server, finished):
    status, child = server.post_json(f"/v1/jobs/{finished}/regenerate", {"labels": [4], "seeds": {"4": 99}})
    assert status == 202 and child["parent"] == finished
    assert server.wait(child["job_id"])["state"] == "succeeded"
    def files(job, name):
        return server.request("GET", f"/v1/jobs/{job}/files/{name}")[2]

    assert files(child["job_id"], "instance_1.glb") == files(finished, "instance_1.glb")
    assert files(child["job_id"], "instance_4.glb") != files(finished, "instance_4.glb")
    manifest = server.get(f"/v1/jobs/{child['job_id']}/scene")
    parent = server.get(f"/v1/jobs/{finished}/scene")
    assert manifest["frame"] == parent["frame"]
    assert {e["label"]: e["seed"] for e in manifest["instances"]} == {1: 42, 4: 99}


@pytest.mark.parametrize("make, expected", [
    (lambda s: (b"not an image", s[1]), (400, "bad_input")),
    (lambda s: (s[0], png(np.zeros((240, 320), np.uint8))), (400, "bad_input")),
    (lambda s: (png(np.zeros((100, 320, 3), np.uint8)), s[1]), (400, "bad_input")),
])
def test_bad_uploads_are_400_with_a_hint(server, scene, make, expected):
    assert error_of(server.submit(*make(scene), FAST)) == expected
    assert server.get("/v1/health")["state"] == "ready"


@pytest.mark.parametrize("params, fragment", [
    ("{not json", "not valid JSON"), ('{"steps": 0}', "steps"), ('{"colour": "red"}', "colour"),
    ('{"labels": [77]}', "no instance 77"), ('[1, 2]', "JSON object"),
])
def test_bad_params_are_400_naming_the_problem(server, scene, params, fragment):
    from server_process import multipart
    body, content_type = multipart({"image": ("a.png", scene[0]), "labels": ("b.png", scene[1])}, {"params": params})
    status, _, data = server.request("POST", "/v1/jobs", body, {"Content-Type": content_type})
    assert status == 400 and fragment in json.loads(data)["error"]["message"]


def test_unknown_jobs_files_and_routes_are_404(server, finished):
    for path in ("/v1/jobs/0123456789abcdef0123456789abcdef", "/v1/jobs/../../etc/passwd", "/v1/jobs/x/scene",
                 f"/v1/jobs/{finished}/files/job.json", f"/v1/jobs/{finished}/files/instance_9.glb",
                 f"/v1/jobs/{finished}/files/..%2Finputs%2Fimage", "/generate"):
        status, _, data = server.request("GET", path)
        assert status == 404, path
        assert json.loads(data)["error"]["hint"]


def test_wrong_state_is_409(server, scene, finished):
    _, created = server.submit(*scene, {**FAST, "steps": 60})
    # no layout yet (issue 15: the scene of a running job is served once its layout is ready)
    assert error_of(call(server, "GET", f"/v1/jobs/{created['job_id']}/scene")) == (409, "not_ready")
    regenerate = server.post_json(f"/v1/jobs/{created['job_id']}/regenerate", {"labels": [1]})
    assert error_of(regenerate) == (409, "wrong_state")
    server.request("DELETE", f"/v1/jobs/{created['job_id']}")
    assert error_of(server.post_json(f"/v1/jobs/{finished}/regenerate", {"labels": [5]})) == (400, "bad_input")


def test_oversized_upload_is_413(tiny_package, tmp_path, scene):
    small = ServerProcess(tiny_package, tmp_path / "data", "--max-upload-mb", "0.01").start()
    try:
        assert error_of(small.submit(*scene, FAST)) == (413, "too_large")
        assert small.get("/v1/health")["state"] == "ready"
    finally:
        small.stop()


def test_token_is_required_when_configured(tiny_package, tmp_path, scene):
    guarded = ServerProcess(tiny_package, tmp_path / "data", token="s3cret").start()
    try:
        assert guarded.request("GET", "/v1/health", token="")[0] == 200  # health stays public
        status, headers, data = guarded.request("GET", "/v1/jobs", token="wrong")
        assert status == 401 and headers.get("www-authenticate") == "Bearer"
        assert json.loads(data)["error"]["code"] == "unauthorized"
        assert guarded.submit(*scene, FAST, token="")[0] == 401
        assert guarded.request("GET", "/v1/jobs")[0] == 200
    finally:
        guarded.stop()


def serve(tiny_package, tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iscene_server.cli", "serve", "--model", str(tiny_package),
                           "--data-dir", str(tmp_path), *args], capture_output=True, text=True, timeout=60)


def test_listening_beyond_loopback_needs_a_token(tiny_package, tmp_path):
    proc = serve(tiny_package, tmp_path, "--host", "0.0.0.0")
    assert proc.returncode == 2 and "without an access token" in proc.stderr


def test_a_busy_port_is_a_clear_error_before_the_model_loads(tiny_package, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = serve(tiny_package, tmp_path, "--port", str(port))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr


def test_port_0_serves_on_the_port_the_banner_names(server):
    """Every ServerProcess asks for port 0; the server's banner line names the port it was given."""
    assert server.bound_port() == server.port and server.get("/v1/health")["service"] == "iscene"


def test_restart_keeps_finished_jobs_requeues_queued_and_fails_running(tiny_package, tmp_path, scene):
    first = ServerProcess(tiny_package, tmp_path / "data").start()
    _, done = first.submit(*scene, FAST)
    first.wait(done["job_id"])
    _, running = first.submit(*scene, {**FAST, "steps": 100})
    _, queued = first.submit(*scene, FAST)
    first.wait(running["job_id"], states=("running",))
    first.kill()
    second = ServerProcess(tiny_package, tmp_path / "data", port=first.port).start()
    try:
        assert second.get(f"/v1/jobs/{done['job_id']}")["state"] == "succeeded"
        assert second.request("GET", f"/v1/jobs/{done['job_id']}/files/scene.glb")[0] == 200
        crashed = second.get(f"/v1/jobs/{running['job_id']}")
        assert crashed["state"] == "failed" and crashed["error"]["code"] == "server_restarted"
        assert second.wait(queued["job_id"])["state"] == "succeeded"
    finally:
        second.stop()


def test_a_full_queue_is_503_and_clears(tiny_package, tmp_path, scene):
    busy = ServerProcess(tiny_package, tmp_path / "data", "--max-queue", "1").start()
    try:
        _, running = busy.submit(*scene, {**FAST, "steps": 60})
        busy.wait(running["job_id"], states=("running",))
        _, waiting = busy.submit(*scene, FAST)
        assert error_of(busy.submit(*scene, FAST)) == (503, "unavailable")
        busy.request("DELETE", f"/v1/jobs/{waiting['job_id']}")
        assert busy.submit(*scene, FAST)[0] == 202
        busy.request("DELETE", f"/v1/jobs/{running['job_id']}")
    finally:
        busy.stop()
