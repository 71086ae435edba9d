"""Several workers in one service (issue 18): ``--devices cpu,cpu`` runs two jobs at once, each worker on its own
loaded model; the queue hands the next job to the first free worker it suits; health lists the workers.

The engine runs on two real CPU workers with the tiny package. Overlap is made certain, not timed: each job is
held right after it published its layout until both jobs are running. The queue's rules are tested with
:class:`HeldWorker` (a worker whose jobs wait for the test), since they are about who takes what, not the engine.
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import FAST
from fastapi.testclient import TestClient
from in_process import wait_until_final as wait

from iscene_server.api.app import create_app
from iscene_server.cli import build_parser, main
from iscene_server.jobs.publishing import Publisher
from iscene_server.jobs.service import JobService, ServiceSettings
from iscene_server.jobs.store import RUNNING
from iscene_server.jobs.workers.base import JobRun, Worker
from iscene_server.segment.prompts import SegmentPrompts


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def two_cpus(tiny_package, tmp_path_factory):
    settings = ServiceSettings(model=str(tiny_package), data_dir=tmp_path_factory.mktemp("two-cpus") / "data",
                               devices=("cpu", "cpu"), max_age_days=None, max_store_gb=None)
    svc = JobService(settings)
    svc.start()
    wait_for(lambda: all(w["state"] == "ready" for w in svc.health()["workers"]), "both workers to load")
    yield svc
    svc.stop()


@pytest.fixture
def held_at_layout(monkeypatch, two_cpus):
    """Holds every job right after its layout event until two jobs are running (or the test releases them)."""
    release = threading.Event()
    real = Publisher.event

    def event(publisher, name, **fields):
        entry = real(publisher, name, **fields)
        if name == "layout":
            deadline = time.monotonic() + 120
            while len(two_cpus.health()["running_jobs"]) < 2 and not release.is_set():
                assert time.monotonic() < deadline, "the second job never started while the first ran"
                time.sleep(0.02)
            assert release.wait(120), "the test never released the jobs"
        return entry

    monkeypatch.setattr(Publisher, "event", event)
    return release


def test_two_jobs_run_at_once_and_write_what_one_worker_writes(two_cpus, held_at_layout, small_inputs,
                                                                  generated_scene):
    ids = [two_cpus.submit("generate", dict(FAST), dict(small_inputs)).id for _ in range(2)]
    wait_for(lambda: len(two_cpus.health()["running_jobs"]) == 2, "both jobs to run")
    health = two_cpus.health()
    assert [(w["name"], w["device"], w["state"]) for w in health["workers"]] == [
        ("local-0", "cpu", "ready"), ("local-1", "cpu", "ready")]
    assert sorted(w["job"] for w in health["workers"]) == sorted(ids) == sorted(health["running_jobs"])
    assert health["state"] == "ready" and health["running"] in ids and health["queue_length"] == 0
    served = TestClient(create_app(two_cpus)).get("/v1/health").json()  # over HTTP (no lifespan: no stop)
    assert [(w["name"], w["job"]) for w in served["workers"]] == [(w["name"], w["job"]) for w in health["workers"]]
    assert sorted(served["running_jobs"]) == sorted(ids)
    held_at_layout.set()
    assert [wait(two_cpus, job_id)["state"] for job_id in ids] == ["succeeded", "succeeded"]
    first, second = sorted((two_cpus.store.get(job_id) for job_id in ids), key=lambda r: r.started)
    assert second.started < first.finished, "the two jobs did not run at the same time"
    meshes = sorted(path.name for path in generated_scene.glob("*.glb"))
    assert meshes, "the one-worker run wrote no meshes"
    for job_id in ids:  # the same seed on each worker: the same bytes as one worker writes
        folder = two_cpus.store.folder(job_id)
        assert sorted(path.name for path in folder.glob("*.glb")) == meshes
        for name in meshes:
            assert (folder / name).read_bytes() == (generated_scene / name).read_bytes(), name


def test_cancel_reaches_the_job_on_the_second_worker(two_cpus, held_at_layout, small_inputs):
    ids = [two_cpus.submit("generate", dict(FAST), dict(small_inputs)).id for _ in range(2)]
    wait_for(lambda: len(two_cpus.health()["running_jobs"]) == 2, "both jobs to run")
    on_second = next(w["job"] for w in two_cpus.health()["workers"] if w["name"] == "local-1")
    two_cpus.cancel(on_second)
    held_at_layout.set()
    states = {job_id: wait(two_cpus, job_id)["state"] for job_id in ids}
    assert states == {job_id: "cancelled" if job_id == on_second else "succeeded" for job_id in ids}
    assert two_cpus.health()["running_jobs"] == []


def test_a_segment_job_runs_before_the_queued_scene_jobs(two_cpus, held_at_layout, small_inputs):
    scene = [two_cpus.submit("generate", dict(FAST), dict(small_inputs)).id for _ in range(3)]
    wait_for(lambda: len(two_cpus.health()["running_jobs"]) == 2, "two scene jobs to run")
    prompts = SegmentPrompts(objects=[{"box": [20, 100, 150, 220]}]).model_dump()
    segment = two_cpus.submit("segment", prompts, {"image": small_inputs["image"]}).id
    assert two_cpus.status(segment)["queue_position"] == 1
    queued = next(job_id for job_id in scene if job_id not in two_cpus.health()["running_jobs"])
    held_at_layout.set()
    assert [wait(two_cpus, job_id)["state"] for job_id in [*scene, segment]] == ["succeeded"] * 4
    assert two_cpus.store.get(segment).started < two_cpus.store.get(queued).started


def test_after_a_restart_the_running_job_fails_and_both_workers_take_the_queued_ones(tiny_package, tmp_path,
                                                                                    small_inputs):
    settings = ServiceSettings(model=str(tiny_package), data_dir=tmp_path / "data", devices=("cpu", "cpu"))
    before = JobService(settings)  # the last run: one job was running when it died, two were queued
    was_running = before.store.create("generate", dict(FAST), dict(small_inputs))
    before.store.update(was_running.id, state=RUNNING, started=time.time())
    queued = [before.store.create("generate", dict(FAST), dict(small_inputs)).id for _ in range(2)]
    after = JobService(settings)
    after.start()
    try:
        status = after.status(was_running.id)
        assert status["state"] == "failed" and status["error"]["code"] == "server_restarted"
        assert [wait(after, job_id)["state"] for job_id in queued] == ["succeeded", "succeeded"]
    finally:
        after.stop()


def test_queued_jobs_fail_with_the_models_error_when_every_worker_failed_to_load(tmp_path, small_inputs):
    settings = ServiceSettings(model=str(tmp_path / "no-such-package"), data_dir=tmp_path / "data",
                               devices=("cpu", "cpu"))
    job = JobService(settings).store.create("generate", dict(FAST), dict(small_inputs))  # queued before a restart
    svc = JobService(settings)
    svc.start()
    try:
        status = wait(svc, job.id)
        assert status["state"] == "failed" and "could not be loaded" in status["error"]["message"]
        health = svc.health()
        assert health["state"] == "error" and [w["state"] for w in health["workers"]] == ["error", "error"]
    finally:
        svc.stop()


class HeldWorker(Worker):
    """A worker whose model is in ``state`` and whose jobs run until the test releases them."""

    def __init__(self, name: str, state: str = "ready"):
        self.name, self.state = name, state
        self.ran: list[str] = []
        self.release = threading.Event()  # set: the job it runs now ends
        self.held = True  # False: its jobs end at once

    def start(self) -> None:
        pass

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return True

    def model_status(self) -> dict:
        error = {"code": "model_load_failed", "message": "broken", "hint": "fix it"} if self.state == "error" else None
        return {"state": self.state, "message": self.state, "error": error}

    def describe(self) -> dict:
        return {"name": self.name, "device": "cpu", "dtype": "float32", **self.model_status(), "vram": None,
                "models": None, "segment_loaded": False}

    def cost_key(self, scene: bool) -> str | None:
        return None

    def default_steps(self) -> tuple[int, int]:
        return 2, 2

    def run(self, job: JobRun) -> None:
        self.ran.append(job.job_id)
        if self.held:
            assert self.release.wait(60), "the test never released the job"
            self.release.clear()

    def let_go(self) -> None:
        self.held = False
        self.release.set()

    def close(self) -> None:
        self.let_go()


@pytest.fixture
def held_service(tmp_path):
    def make(*workers: HeldWorker) -> JobService:
        svc = JobService(ServiceSettings(model="held", data_dir=tmp_path / "data"), workers=workers)
        svc.start()
        made.append(svc)
        return svc

    made: list[JobService] = []
    yield make
    for svc in made:
        svc.stop()


def running_on(svc: JobService, worker: HeldWorker, job_id: str) -> None:
    wait_for(lambda: svc.health()["workers"][svc.workers.index(worker)]["job"] == job_id and
             svc.status(job_id)["state"] == "running", f"{job_id} to run on {worker.name}")


def test_a_worker_whose_model_failed_takes_no_scene_job_while_another_is_ready(held_service, small_inputs):
    broken, good = HeldWorker("broken", "error"), HeldWorker("good")
    svc = held_service(broken, good)
    first, second = (svc.submit("generate", dict(FAST), dict(small_inputs)).id for _ in range(2))
    running_on(svc, good, first)
    health = svc.health()
    assert health["state"] == "ready" and [w["state"] for w in health["workers"]] == ["error", "ready"]
    assert svc.status(second)["state"] == "queued" and svc.status(second)["queue_position"] == 1
    good.release.set()
    running_on(svc, good, second)
    good.let_go()
    assert [wait(svc, job_id)["state"] for job_id in (first, second)] == ["succeeded", "succeeded"]
    assert broken.ran == [] and good.ran == [first, second]


def test_a_segment_job_goes_to_the_first_free_worker_before_queued_scene_jobs(held_service, small_inputs):
    one, two = HeldWorker("one"), HeldWorker("two")
    svc = held_service(one, two)
    scene = [svc.submit("generate", dict(FAST), dict(small_inputs)).id for _ in range(3)]
    wait_for(lambda: len(svc.health()["running_jobs"]) == 2, "two scene jobs to run")
    segment = svc.submit("segment", {}, {"image": small_inputs["image"]}).id
    assert svc.status(segment)["queue_position"] == 1 and svc.status(scene[2])["queue_position"] == 2
    two.release.set()  # the first worker to be free takes the segment job, not the older scene job
    running_on(svc, two, segment)
    assert svc.status(scene[2])["state"] == "queued"
    one.let_go()
    two.let_go()
    assert [wait(svc, job_id)["state"] for job_id in [*scene, segment]] == ["succeeded"] * 4
    assert two.ran[1] == segment and sorted(one.ran[:1] + two.ran[:1]) == sorted(scene[:2])


def test_devices_flag_checks_the_list_before_anything_starts(capsys):
    assert build_parser().parse_args(["serve", "--devices", "cpu,cpu"]).devices == "cpu,cpu"
    assert main(["serve", "--devices", "cpu,,cpu"]) != 0
    assert "empty entry" in capsys.readouterr().err
    assert main(["serve", "--devices", "cpu", "--device", "cpu"]) != 0
    assert "--device and --devices" in capsys.readouterr().err
    assert main(["serve", "--devices", "cpu,tpu9"]) != 0
    assert "is not a device" in capsys.readouterr().err
