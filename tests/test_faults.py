"""Fault injection on a real job service with the tiny model: a full or read-only disk at each write of the
store and the results writer, damaged stored params, and kill -9 mid-job with a restart. After each: no lost
finished job, no stuck queue, and a server that works once the fault is gone. Then the states clients see of
a job past the time limit (on a fake clock, no sleeping on real time), a model package that cannot be loaded,
and the model still loading."""

from __future__ import annotations

import errno
import json
import random
import shutil
import threading
import time

import pytest
from conftest import FAST
from fastapi.testclient import TestClient
from faults import FaultyDisk
from in_process import FINAL
from in_process import wait_until_final as wait
from server_process import ServerProcess, multipart

from iscene_server.api.app import create_app
from iscene_server.engine.pipeline import ScenePipeline
from iscene_server.jobs.service import JobService, ServiceSettings
from iscene_server.jobs.workers import models as worker_models


@pytest.fixture
def service(tiny_package, tmp_path):
    settings = ServiceSettings(model=str(tiny_package), data_dir=tmp_path / "data", device="cpu",
                               max_age_days=None, max_store_gb=None)
    svc = JobService(settings)
    svc.start()
    yield svc
    svc.stop()


def on_disk(svc: JobService, job_id: str) -> dict:
    return json.loads((svc.store.root / job_id / "job.json").read_text())


def healthy_again(svc: JobService, scene) -> None:
    svc.store.check_writable(force=True)
    health = svc.health()
    assert health["storage"] == {"writable": True, "error": None} and health["state"] != "error"
    job = svc.submit("generate", dict(FAST), {"image": scene[0], "labels": scene[1]})
    assert wait(svc, job.id)["state"] == "succeeded"


@pytest.fixture
def writes_of_a_job(service, small_scene, tmp_path, monkeypatch) -> int:
    """How many writes one generate job makes (the record updates and every result file)."""
    disk = FaultyDisk(monkeypatch, tmp_path / "data")
    job = service.submit("generate", dict(FAST), {"image": small_scene[0], "labels": small_scene[1]})
    assert wait(service, job.id)["state"] == "succeeded"
    return disk.writes


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_a_disk_that_stops_taking_writes_mid_job(service, small_scene, tmp_path, monkeypatch, writes_of_a_job,
                                                 code):
    before = [r.id for r in service.store.list()]
    disk = FaultyDisk(monkeypatch, tmp_path / "data")
    expected = "disk_full" if code == errno.ENOSPC else "storage_unwritable"
    submit_writes = 3  # the image, the label map, the queued record
    job_writes = range(submit_writes + 1, writes_of_a_job + 1)
    # the running record, stage-1 structure, the first mesh, then the last three (scene.glb, scene.json, the
    # succeeded record); a full disk also at one write in between, picked at random (seeded)
    picks = sorted({*job_writes[:3], *job_writes[-3:], random.Random(code).choice(job_writes)}) \
        if code == errno.ENOSPC else [job_writes[0], job_writes[-2], job_writes[-1]]
    for at in picks:  # each fails once
        disk.full(code, at=at)
        retry = service.submit("generate", dict(FAST), {"image": small_scene[0], "labels": small_scene[1]})
        status = wait(service, retry.id)
        if status["state"] == "failed":
            assert status["error"]["code"] == expected and str(tmp_path) not in json.dumps(status["error"])
            assert not list((service.store.root / retry.id).glob("*.partial"))
        disk.heal()
        service.store.check_writable(force=True)
        assert on_disk(service, retry.id)["state"] == status["state"]  # saved once the disk took writes again
    assert all(service.status(job_id)["state"] == "succeeded" for job_id in before)  # nothing finished lost
    healthy_again(service, small_scene)


def test_the_whole_disk_full_then_space_returns(service, small_scene, tmp_path, monkeypatch):
    disk = FaultyDisk(monkeypatch, tmp_path / "data")
    job = service.submit("generate", dict(FAST), {"image": small_scene[0], "labels": small_scene[1]})
    disk.full()
    status = wait(service, job.id)
    assert status["state"] == "failed" and status["error"]["code"] == "disk_full"
    health = service.health()
    assert health["state"] == "error" and health["storage"]["error"]["code"] == "disk_full"
    assert "free disk space in --data-dir" in health["error"]["hint"]
    with pytest.raises(Exception) as refused:
        service.submit("generate", dict(FAST), {"image": small_scene[0], "labels": small_scene[1]})
    assert getattr(refused.value, "code", None) == "disk_full"
    assert len(list(service.store.root.iterdir())) == 1  # the refused submit left no folder
    assert on_disk(service, job.id)["state"] in ("queued", "running")  # the last record the disk took
    disk.heal()
    healthy_again(service, small_scene)
    assert on_disk(service, job.id)["state"] == "failed"
    assert all(thread.is_alive() for thread in service._threads)  # every worker still serves


def test_a_requeued_job_with_damaged_params_fails_clearly(tiny_package, tmp_path, small_scene):
    settings = ServiceSettings(model=str(tiny_package), data_dir=tmp_path / "data", device="cpu")
    first = JobService(settings)
    job = first.store.create("generate", {**FAST, "detail": "ultra"}, {"image": small_scene[0],
                                                                        "labels": small_scene[1]})
    second = JobService(settings)  # a restart: the job is queued again from its record
    second.start()
    try:
        status = wait(second, job.id)
        assert status["state"] == "failed" and status["error"]["code"] == "bad_input"
        assert "detail 'ultra'" in status["error"]["message"] and status["error"]["hint"]
        healthy_again(second, small_scene)
    finally:
        second.stop()


def test_kill_9_mid_job_then_restart(tiny_package, tmp_path, small_scene):
    data = tmp_path / "data"
    server = ServerProcess(tiny_package, data).start()
    rng = random.Random(12)
    try:
        _, done = server.submit(*small_scene, FAST)
        assert server.wait(done["job_id"])["state"] == "succeeded"
        for _ in range(2):
            _, victim = server.submit(*small_scene, {**FAST, "steps": 6})
            _, queued = server.submit(*small_scene, FAST)
            time.sleep(rng.uniform(0.0, 1.5))
            server.kill()
            server = ServerProcess(tiny_package, data, port=server.port).start()
            assert server.get(f"/v1/jobs/{done['job_id']}")["state"] == "succeeded"  # no finished job lost
            assert server.wait(victim["job_id"])["state"] in FINAL  # restarted jobs end; none stays running
            assert server.wait(queued["job_id"])["state"] == "succeeded"  # the queue runs on
        code, _, _ = server.request("GET", f"/v1/jobs/{done['job_id']}/files/scene.glb")
        assert code == 200
    finally:
        server.stop()


# --- the time limit, a model that cannot load, the loading state (what clients see of each) -----------------
class JumpingClock:
    """A clock that stands still, except for one jump of ``by`` seconds at its ``at``-th reading."""

    def __init__(self, at: int, by: float):
        self.now, self.reads, self.at, self.by = 1000.0, 0, at, by

    def __call__(self) -> float:
        self.reads += 1
        if self.reads == self.at:
            self.now += self.by
        return self.now


def settings(model, tmp_path, **changes) -> ServiceSettings:
    return ServiceSettings(model=str(model), data_dir=tmp_path / "data", device="cpu", max_age_days=None,
                           max_store_gb=None, **changes)


def submit_body(inputs: dict[str, bytes], params: str = "{}") -> tuple[bytes, dict]:
    files = {"image": ("image.png", inputs["image"]), "labels": ("labels.png", inputs["labels"])}
    body, content_type = multipart(files, {"params": params})
    return body, {"Content-Type": content_type}


def test_a_job_past_the_time_limit_fails_with_timeout_and_the_next_one_gets_its_own_time(tiny_package, tmp_path,
                                                                                          small_inputs):
    clock = JumpingClock(at=6, by=61.0)  # the sixth reading falls a minute into stage 1 of the first job
    svc = JobService(settings(tiny_package, tmp_path, job_timeout_s=60, clock=clock))
    svc.start()
    try:
        late = svc.submit("generate", {**FAST, "steps": 10}, small_inputs)
        failed = wait(svc, late.id)
        assert failed["state"] == "failed" and failed["error"]["code"] == "timeout", failed
        assert "limit of 60 s" in failed["error"]["message"] and "--job-timeout" in failed["error"]["hint"]
        assert not (svc.store.folder(late.id) / "scene.json").exists(), "a timed-out job leaves no results"
        on_time = svc.submit("generate", dict(FAST), small_inputs)
        assert wait(svc, on_time.id)["state"] == "succeeded"  # the clock stood still through the whole job
    finally:
        svc.stop()


@pytest.fixture
def broken_package(tiny_package, tmp_path):
    """The tiny package with one of its base model's checkpoints truncated."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_package, broken)
    weights = next((broken / "trellis-image-tiny" / "ckpts").glob("slat_flow_*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    return broken


def test_a_model_that_cannot_load_is_health_error_and_generate_503(broken_package, tmp_path, small_inputs):
    svc = JobService(settings(broken_package, tmp_path))
    with TestClient(create_app(svc)) as client:
        deadline = time.monotonic() + 60
        while (health := client.get("/v1/health").json())["state"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health["state"] == "error" and health["error"]["code"] == "model_package", health
        assert health["message"] == health["error"]["message"] and health["error"]["hint"]
        body, headers = submit_body(small_inputs)
        response = client.post("/v1/jobs", content=body, headers=headers)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "unavailable" and "could not be loaded" in error["message"] and error["hint"]
        assert svc.store.list() == [], "no job is queued on a model that cannot run it"


def test_loading_is_visible_in_health_and_jobs_wait_for_the_model(tiny_package, tmp_path, small_inputs, monkeypatch):
    release, opening = threading.Event(), threading.Event()

    class HeldPipeline:
        """Opens the real pipeline once the test releases it."""

        @staticmethod
        def from_pretrained(*args, **kwargs):
            opening.set()
            assert release.wait(60)
            return ScenePipeline.from_pretrained(*args, **kwargs)

    monkeypatch.setattr(worker_models, "ScenePipeline", HeldPipeline)
    svc = JobService(settings(tiny_package, tmp_path))
    with TestClient(create_app(svc)) as client:
        assert opening.wait(60)
        health = client.get("/v1/health").json()
        assert health["state"] == "loading" and health["models"] is None and health["error"] is None
        assert str(tiny_package) in health["message"]
        body, headers = submit_body(small_inputs, '{"steps": 2, "slat_steps": 2, "detail": "low"}')
        response = client.post("/v1/jobs", content=body, headers=headers)
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
        release.set()
        assert wait(svc, job_id)["state"] == "succeeded"
        health = client.get("/v1/health").json()
        assert health["state"] == "ready" and health["models"]["model_name"] == "IScene-tiny"
