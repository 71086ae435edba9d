"""The Ray worker pool (issue 18): jobs run on Ray actors (two CPU actors on a local Ray here, with the tiny
package) while the queue and the job store stay on the head.

Float results depend on how many threads torch computes with (the reduction order changes): a Ray actor with
``num_cpus=1`` computes with one thread (Ray sets ``OMP_NUM_THREADS``), so the local reference run uses the
thread count the actor reports, and then every file is byte-identical (the manifest up to its timings)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST
from in_process import wait_until_final as wait

from iscene_server import cli
from iscene_server.engine.eta import GENERATE_PLAN
from iscene_server.errors import ISceneError
from iscene_server.jobs.service import JobService, ServiceSettings
from iscene_server.jobs.store import RECORD
from iscene_server.jobs.workers.base import JobRun
from iscene_server.jobs.workers.local import LocalWorker
from iscene_server.jobs.workers.models import ModelSettings
from iscene_server.jobs.workers.remote import RayWorker, actor_plan, ray_pool

ray = pytest.importorskip("ray")  # in the test extra: CI has it

SLOW = {"steps": 25, "slat_steps": 2, "detail": "low"}  # long enough to act on a job while it runs
MANIFEST = "scene.json"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2 ** 20, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def model_settings(tiny_package) -> ModelSettings:
    return ModelSettings(model=str(tiny_package), device="cpu")


def pool(tiny_package, count: int = 2) -> list[RayWorker]:
    return ray_pool("local", count, model_settings(tiny_package))


def service_on(data_dir: Path, tiny_package, workers) -> JobService:
    settings = ServiceSettings(model=str(tiny_package), data_dir=data_dir, device="cpu", max_age_days=None,
                               max_store_gb=None)
    svc = JobService(settings, workers=workers)
    svc.start()
    return svc


def wait_state(svc: JobService, job_id: str, state: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = svc.status(job_id)
        if status["state"] == state and status.get("progress", 0) > 0:
            return status
        assert status["state"] in ("queued", "running"), status
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} never got to {state}")


class Recorder:
    """A publisher that keeps each event with the files in the job's folder at that moment."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.events: list[tuple[str, dict, set[str]]] = []

    def event(self, name: str, **fields) -> None:
        self.events.append((name, fields, {p.name for p in self.folder.iterdir()}))


def job_run(job_id: str, folder: Path, inputs: dict, params: dict, updates: list) -> JobRun:
    folder.mkdir(parents=True)
    return JobRun(job_id, "generate", params, dict(inputs), folder, None, dict(GENERATE_PLAN), updates.append,
                  threading.Event(), Recorder(folder), 600.0)


def comparable(folder: Path) -> dict[str, bytes | dict]:
    """The job's result files (not the store's record and inputs); the manifest without its measured timings."""
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != RECORD}
    manifest = json.loads(files.pop(MANIFEST))
    manifest.pop("timings_s")
    return {**files, MANIFEST: manifest}


@pytest.fixture(scope="module")
def ran_two(tiny_package, small_inputs, tmp_path_factory):
    """Two generate jobs submitted at once to a service with two Ray workers."""
    workers = pool(tiny_package)
    svc = service_on(tmp_path_factory.mktemp("ray-two") / "data", tiny_package, workers)
    try:
        for worker in workers:
            assert worker.wait_loaded(120)
        jobs = [svc.submit("generate", {**FAST, "seed": seed}, dict(small_inputs)).id for seed in (11, 12)]
        statuses = [wait(svc, job) for job in jobs]
        health = svc.health()
        child = svc.submit_regenerate(jobs[0], [1], {1: 7}).id  # its parent's files travel to the actor
        statuses.append(wait(svc, child))
    finally:
        svc.stop()  # its actors hold both CPUs of the local Ray: the next tests need them
    return svc, jobs, statuses, health, workers


def test_two_jobs_run_at_the_same_time_on_two_actors(ran_two):
    svc, jobs, statuses, health, _ = ran_two
    assert [s["state"] for s in statuses[:2]] == ["succeeded", "succeeded"]
    records = [svc.store.get(job) for job in jobs]
    assert max(r.started for r in records) < min(r.finished for r in records)  # they overlapped
    assert [w["name"] for w in health["workers"]] == ["ray-0", "ray-1"]
    assert all(w["state"] == "ready" and w["device"] == "cpu" for w in health["workers"])
    for job in jobs:  # published as locally: layout, then one instance per object, each file there
        assert [e["event"] for e in svc.status(job)["events"]] == ["layout", "instance", "instance"]


def test_a_child_job_runs_on_an_actor_with_its_parents_files(ran_two):
    svc, jobs, statuses, _, _ = ran_two
    assert statuses[2]["state"] == "succeeded", statuses[2]
    child = statuses[2]["job_id"]
    manifest = json.loads((svc.store.folder(child) / MANIFEST).read_text())
    parent = json.loads((svc.store.folder(jobs[0]) / MANIFEST).read_text())
    assert manifest["frame"] == parent["frame"]  # the regenerate kept its parent's frame: it read its files
    assert {i["label"]: i["seed"] for i in manifest["instances"]}[1] == 7


def test_results_are_byte_identical_to_a_local_worker(ran_two, tiny_package, small_inputs, tmp_path):
    svc, jobs, _, _, workers = ran_two
    threads = workers[0]._status["torch_threads"]
    local = LocalWorker("local-0", model_settings(tiny_package))
    local.start()
    assert local.wait_loaded(120)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run = job_run("reference", tmp_path / "local", small_inputs, {**FAST, "seed": 11}, [])
        local.run(run)
    finally:
        torch.set_num_threads(before)
        local.close()
    assert comparable(svc.store.folder(jobs[0])) == comparable(run.folder)


def test_a_remote_job_reports_progress_and_lands_each_file_before_its_event(tiny_package, small_inputs, tmp_path):
    [worker] = pool(tiny_package, 1)
    worker.start()
    try:
        assert worker.wait_loaded(120)
        updates: list = []
        run = job_run("direct", tmp_path / "job", small_inputs, {**FAST, "seed": 3}, updates)
        worker.run(run)
    finally:
        worker.close()
    names = [(name, fields) for name, fields, _ in run.publisher.events]
    assert names == [("layout", {}), ("instance", {"label": 1}), ("instance", {"label": 4})]
    layout, first, second = (files for _, _, files in run.publisher.events)
    assert {"proxy_1.glb", "proxy_4.glb", MANIFEST} <= layout
    assert "instance_1.glb" in first and "instance_4.glb" in second
    fractions = [update.fraction for update in updates]
    assert fractions == sorted(fractions) and fractions[-1] > 0.9
    assert updates[-1].stage == list(run.stage_seconds)[-1]  # the last stage's progress came back too
    assert set(run.stage_seconds) >= {"stage1", "stage2", "meshes"}
    assert not list(run.folder.glob("*.partial"))


def test_cancel_of_a_running_remote_job(tiny_package, small_inputs, tmp_path):
    svc = service_on(tmp_path / "data", tiny_package, pool(tiny_package, 1))
    try:
        job = svc.submit("generate", {**SLOW, "seed": 5}, dict(small_inputs)).id
        wait_state(svc, job, "running")
        svc.cancel(job)
        assert wait(svc, job)["state"] == "cancelled"
        after = svc.submit("generate", {**FAST, "seed": 6}, dict(small_inputs)).id
        assert wait(svc, after)["state"] == "succeeded"  # the actor goes on
    finally:
        svc.stop()


def test_an_actor_killed_mid_job_fails_it_clearly_and_the_queue_goes_on(tiny_package, small_inputs, tmp_path):
    [worker] = workers = pool(tiny_package, 1)
    svc = service_on(tmp_path / "data", tiny_package, workers)
    try:
        victim = svc.submit("generate", {**SLOW, "seed": 5}, dict(small_inputs)).id
        queued = svc.submit("generate", {**FAST, "seed": 6}, dict(small_inputs)).id
        wait_state(svc, victim, "running")
        lost = worker.actor
        ray.kill(lost)
        status = wait(svc, victim)
        assert status["state"] == "failed" and status["error"]["code"] == "worker_lost", status
        assert "ray-0" in status["error"]["message"] and "lost" in status["error"]["message"]
        assert "Retry" in status["error"]["hint"]
        assert wait(svc, queued)["state"] == "succeeded"  # on the fresh actor that replaced the lost one
        assert worker.actor is not lost
    finally:
        svc.stop()


def test_the_head_restarted_while_jobs_run_on_actors(tiny_package, small_inputs, tmp_path):
    data = tmp_path / "data"
    first_pool = pool(tiny_package)
    first = service_on(data, tiny_package, first_pool)
    try:
        jobs = [first.submit("generate", {**SLOW, "seed": seed}, dict(small_inputs)).id for seed in (1, 2, 3)]
        wait_state(first, jobs[0], "running")
        wait_state(first, jobs[1], "running")
    finally:
        first.stop()
    for worker in first_pool:  # the old head's actors are gone
        assert worker.actor is None
    second = service_on(data, tiny_package, pool(tiny_package))
    try:
        statuses = [wait(second, job) for job in jobs]
        assert all(s["state"] in ("cancelled", "failed") for s in statuses[:2]), statuses
        assert statuses[2]["state"] == "succeeded"  # queued at the restart: run by the new head's actors
        fresh = second.submit("generate", {**FAST, "seed": 4}, dict(small_inputs)).id
        assert wait(second, fresh)["state"] == "succeeded"
    finally:
        second.stop()


def test_a_worker_of_another_version_is_an_error():
    status = RayWorker._checked({"version": "0.0.1", "state": "ready", "message": "ready", "error": None})
    assert status["state"] == "error" and status["error"]["code"] == "version_mismatch"
    assert "0.0.1" in status["message"] and "install iscene-server" in status["error"]["hint"]


def test_a_cluster_without_gpus_needs_a_worker_count(tiny_package):
    with pytest.raises(ISceneError) as refused:
        ray_pool("local", None, model_settings(tiny_package))
    assert "no GPU" in refused.value.message and "--ray-workers" in refused.value.hint


@pytest.mark.parametrize(("gpus", "workers", "device", "plan"), [
    (2, None, "auto", (2, {"num_gpus": 1}, "auto")),  # one actor per GPU, each on the GPU Ray gives it
    (2, 3, "cuda", (3, {"num_gpus": 1}, "cuda")),  # the third waits for a GPU
    (2, 2, "cpu", (2, {"num_cpus": 1}, "cpu")),  # --device cpu on a GPU cluster: CPU actors, no GPU held
    (0, 2, "auto", (2, {"num_cpus": 1}, "cpu")),
])
def test_the_actor_plan_follows_the_cluster_and_the_device(gpus, workers, device, plan):
    assert actor_plan("auto", gpus, workers, device) == plan


@pytest.mark.parametrize(("gpus", "workers", "device", "problem", "hint"), [
    (2, None, "cuda:1", "names one GPU of this machine", "leave --device at auto"),  # actors see only their GPU
    (0, 2, "cuda", "has no GPU", "leave --device at auto"),
    (2, None, "cpu", "'one worker per GPU' does not apply", "--ray-workers N"),
    (2, 0, "auto", "at least 1", "--ray-workers 1"),
])
def test_actor_plans_that_cannot_work_are_refused_with_the_fix(gpus, workers, device, problem, hint):
    with pytest.raises(ISceneError) as refused:
        actor_plan("auto", gpus, workers, device)
    assert problem in refused.value.message and hint in refused.value.hint and refused.value.code == "bad_input"


def test_ray_without_ray_installed_answers_the_install_hint(monkeypatch, capsys, tiny_package, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the [cluster] extra
    code = cli.main(["serve", "--ray", "auto", "--model", str(tiny_package), "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--ray needs Ray" in err
    assert 'pip install "iscene-server[cluster]"' in err and "Traceback" not in err


@pytest.mark.parametrize(("options", "problem"), [(["--ray-workers", "2"], "--ray-workers needs --ray"),
                                                  (["--ray", "local", "--devices", "cpu,cpu"], "--ray and --devices"),
                                                  (["--ray", "local", "--device", "cuda:1"], "names one GPU")])
def test_ray_options_that_do_not_go_together(capsys, tmp_path, options, problem):
    code = cli.main(["serve", "--model", str(tmp_path / "no-model"), "--data-dir", str(tmp_path), *options])
    err = capsys.readouterr().err
    assert code == 2 and problem in err and "hint:" in err
