"""Progressive results (issue 15): a scene job publishes its layout (proxies, camera, a partial manifest) once
stage 1 is done and each object's files once that object is final, while it still runs; a cancelled or failed
job keeps what was finished; a layout job stops after stage 1 and Build Meshes makes its meshes without it.

Ordering is asserted through the job's own events. The "while it still runs" tests hold the job's worker right
after it published an event (a gate on :meth:`Publisher.event`), so what the client sees then is seen while the
job is running by construction, with no timing involved."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from conftest import FAST
from fastapi.testclient import TestClient
from in_process import wait_until_final as wait

from iscene_server.api.app import create_app
from iscene_server.engine.results import SceneWriter
from iscene_server.geometry.glb_reader import read_glb, read_instance_mesh
from iscene_server.jobs.publishing import Publisher
from iscene_server.jobs.service import JobService, ServiceSettings

LABELS = [1, 4]  # the small scene's objects
SHIFT = [[1, 0, 0, 0.125], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # 8 cells along x


@pytest.fixture(scope="module")
def service(tiny_package, tmp_path_factory):
    settings = ServiceSettings(model=str(tiny_package), data_dir=tmp_path_factory.mktemp("progressive") / "data",
                               device="cpu", max_age_days=None, max_store_gb=None)
    svc = JobService(settings)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as client:
        yield client


class Gate:
    """Holds the job's worker right after it publishes the ``stops``-th event named ``name``, until released."""

    def __init__(self, monkeypatch, name: str, stops: int = 1, then=None):
        self.reached, self.released = threading.Event(), threading.Event()
        self.seen = 0
        real = Publisher.event
        gate = self

        def event(publisher, event_name, **fields):
            entry = real(publisher, event_name, **fields)
            if event_name == name:
                gate.seen += 1
                if gate.seen == stops:
                    gate.entry = entry
                    if then is not None:
                        then(publisher.job_id)
                    gate.reached.set()
                    assert gate.released.wait(120), "the test never released the job"
            return entry

        monkeypatch.setattr(Publisher, "event", event)

    def wait(self) -> dict:
        assert self.reached.wait(300), "the job never published the event"
        return self.entry


def submit(svc: JobService, small_inputs, **params) -> str:
    return svc.submit("generate", {**FAST, **params}, dict(small_inputs)).id


def assert_published_in_order(status: dict, labels: list[int]) -> None:
    """``layout`` first and once, then one ``instance`` per label; seq 0, 1, ...; times never going back."""
    events = status["events"]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[0]["event"] == "layout" and [e["event"] for e in events].count("layout") == 1
    assert sorted(e["label"] for e in events[1:]) == labels and all(e["event"] == "instance" for e in events[1:])
    times = [e["t"] for e in events]
    assert times == sorted(times) and times[0] >= 0
    assert status["layout_ready"] and status["ready_labels"] == labels and status["ready_variants"] == []


def assert_layout_entries(manifest: dict, files: set[int]) -> None:
    """Every entry has its proxy and origin (the voxel box's bottom centre); only ``files`` labels a mesh."""
    for entry in manifest["instances"]:
        assert entry["proxy"] == f"proxy_{entry['label']}.glb"
        lo_hi = entry["bbox"] if entry["file"] is None else None
        if lo_hi is not None:
            lo, hi = np.array(lo_hi["min"]), np.array(lo_hi["max"])
            assert entry["origin"] == pytest.approx([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
        assert (entry["file"] is not None) == (entry["label"] in files)


def test_the_layout_then_each_object_is_downloadable_while_the_job_runs(service, client, small_inputs, monkeypatch):
    layout = Gate(monkeypatch, "layout")
    job = submit(service, small_inputs)
    layout.wait()
    try:
        status = client.get(f"/v1/jobs/{job}").json()
        assert status["state"] == "running" and status["layout_ready"] and status["ready_labels"] == []
        partial = client.get(f"/v1/jobs/{job}/scene").json()
        assert partial["partial"] is True and partial["stage"] == "layout" and "stopped" not in partial
        assert partial["camera"] is not None and partial["camera_fit"] is not None  # solved before publishing
        assert [e["label"] for e in partial["instances"]] == LABELS
        assert_layout_entries(partial, files=set())
        proxy = client.get(f"/v1/jobs/{job}/files/proxy_1.glb")
        assert proxy.status_code == 200 and proxy.headers["content-type"] == "model/gltf-binary"
        gltf, _ = read_glb(proxy.content)
        assert gltf["nodes"][0]["extras"]["proxy"] is True and gltf["nodes"][0]["extras"]["label"] == 1
        mesh = read_instance_mesh(proxy.content)
        lo, hi = np.array(partial["instances"][0]["bbox"]["min"]), np.array(partial["instances"][0]["bbox"]["max"])
        # it covers the object's voxels, pooled at most to 8^3 cells (1/8 of the scene) beyond them
        assert np.all(mesh.vertices.min(0) <= lo + 1e-6) and np.all(mesh.vertices.max(0) >= hi - 1e-6)
        assert np.all(mesh.vertices.min(0) >= lo - 1 / 8 - 1e-6) and np.all(mesh.vertices.max(0) <= hi + 1 / 8 + 1e-6)
        assert client.get(f"/v1/jobs/{job}/files/instance_1.glb").status_code == 404  # not written yet
        first = Gate(monkeypatch, "instance")
    finally:
        layout.released.set()
    label = first.wait()["label"]
    try:
        status = client.get(f"/v1/jobs/{job}").json()
        assert status["state"] == "running" and status["ready_labels"] == [label]
        partial = client.get(f"/v1/jobs/{job}/scene").json()
        assert partial["partial"] is True and partial["stage"] == "meshes"
        assert_layout_entries(partial, files={label})
        early = client.get(f"/v1/jobs/{job}/files/instance_{label}.glb")
        assert early.status_code == 200
    finally:
        first.released.set()
    status = wait(service, job)
    assert status["state"] == "succeeded"
    assert_published_in_order(status, LABELS)
    assert status["events"][1]["label"] == label
    final = client.get(f"/v1/jobs/{job}/scene").json()
    assert "partial" not in final and "stage" not in final and final["stages"] == 2
    assert_layout_entries(final, files=set(LABELS))
    assert early.content == client.get(f"/v1/jobs/{job}/files/instance_{label}.glb").content  # final when listed


def test_the_final_manifest_is_what_it_was_plus_the_layout_fields(server, finished_job):
    status = server.get(f"/v1/jobs/{finished_job}")
    assert_published_in_order(status, LABELS)
    manifest = server.get(f"/v1/jobs/{finished_job}/scene")
    assert "partial" not in manifest and "stopped" not in manifest
    assert manifest["files"] == {"scene": "scene.glb", "structure": "structure.npz"}
    for entry in manifest["instances"]:
        assert set(entry) == {"label", "seed", "voxels", "bbox", "origin", "proxy", "file", "vertices", "faces",
                              "extracted_faces", "texture"}
        code, _, data = server.request("GET", f"/v1/jobs/{finished_job}/files/{entry['proxy']}")
        assert code == 200 and 0 < len(read_instance_mesh(data).faces) <= 3000


def test_a_job_cancelled_after_its_first_object_keeps_it(service, client, small_inputs, monkeypatch):
    Gate(monkeypatch, "instance", then=service.cancel).released.set()  # cancel right after the first object
    job = submit(service, small_inputs)
    status = wait(service, job)
    assert status["state"] == "cancelled"
    (done,) = status["ready_labels"]
    assert [e["event"] for e in status["events"]] == ["layout", "instance"] and status["layout_ready"]
    assert client.get(f"/v1/jobs/{job}/files/instance_{done}.glb").status_code == 200
    (other,) = set(LABELS) - {done}
    assert client.get(f"/v1/jobs/{job}/files/instance_{other}.glb").status_code == 404
    assert client.get(f"/v1/jobs/{job}/files/proxy_{other}.glb").status_code == 200
    partial = client.get(f"/v1/jobs/{job}/scene").json()
    assert partial["partial"] is True and partial["stopped"] == "cancelled" and partial["stage"] == "meshes"
    assert_layout_entries(partial, files={done})
    on_disk = json.loads((service.store.folder(job) / "job.json").read_text())
    assert on_disk["events"] == status["events"]  # kept in the record: it survives a restart


def test_a_job_that_fails_after_its_first_object_keeps_it(service, client, small_inputs, monkeypatch):
    real = SceneWriter.write_finished
    written = []

    def disk_full_on_the_second(writer, inst):
        if written:
            raise OSError(28, "No space left on device")
        written.append(inst.label)
        return real(writer, inst)

    monkeypatch.setattr(SceneWriter, "write_finished", disk_full_on_the_second)
    job = submit(service, small_inputs)
    status = wait(service, job)
    assert status["state"] == "failed" and status["error"]["code"] == "disk_full"
    assert status["ready_labels"] == written and len(written) == 1
    assert client.get(f"/v1/jobs/{job}/files/instance_{written[0]}.glb").status_code == 200
    partial = client.get(f"/v1/jobs/{job}/scene").json()
    assert partial["partial"] is True and partial["stopped"] == "failed"
    assert_layout_entries(partial, files=set(written))


def test_a_job_stopped_before_its_layout_has_no_scene(service, client, small_inputs):
    job = submit(service, small_inputs, steps=50)
    while service.status(job)["state"] == "queued":
        time.sleep(0.05)
    service.cancel(job)
    status = wait(service, job)
    assert status["state"] == "cancelled" and not status["layout_ready"] and status["events"] == []
    response = client.get(f"/v1/jobs/{job}/scene")
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_ready"
    assert response.json()["error"]["hint"]


def test_a_running_variants_job_says_where_its_candidates_are(service, client, small_inputs, monkeypatch):
    parent = submit(service, small_inputs)
    assert wait(service, parent)["state"] == "succeeded"
    first = Gate(monkeypatch, "variant")
    created = client.post(f"/v1/jobs/{parent}/variants", json={"label": 1, "count": 2})
    assert created.status_code == 202, created.text
    job = created.json()["job_id"]
    first.wait()
    try:
        status = client.get(f"/v1/jobs/{job}").json()
        response = client.get(f"/v1/jobs/{job}/scene")
    finally:
        first.released.set()
    assert status["state"] == "running" and status["ready_variants"] == [1] and not status["layout_ready"]
    error = response.json()["error"]
    assert response.status_code == 409 and error["code"] == "not_ready"
    assert "ready_variants" in error["hint"] and "layout_ready" not in error["hint"]
    assert wait(service, job)["state"] == "succeeded"


def submit_layout(server, small_scene, **params) -> str:
    status, created = server.submit(*small_scene, {**FAST, "until": "layout", **params})
    assert status == 202, created
    return created["job_id"]


def files(server, job: str, names) -> dict[str, bytes]:
    out = {}
    for name in names:
        code, _, data = server.request("GET", f"/v1/jobs/{job}/files/{name}")
        assert code == 200, (name, code)
        out[name] = data
    return out


def test_a_layout_job_then_build_meshes_gives_the_full_generate(server, small_scene, finished_job):
    layout = submit_layout(server, small_scene)
    status = server.wait(layout)
    assert status["state"] == "succeeded" and [e["event"] for e in status["events"]] == ["layout"]
    assert status["layout_ready"] and status["ready_labels"] == []
    manifest = server.get(f"/v1/jobs/{layout}/scene")
    assert manifest["stages"] == 1 and manifest["stage"] == "layout" and "partial" not in manifest
    assert manifest["camera"] is not None
    assert_layout_entries(manifest, files=set())
    assert server.request("GET", f"/v1/jobs/{layout}/files/instance_1.glb")[0] == 404
    files(server, layout, ["proxy_1.glb", "proxy_4.glb", "structure.npz"])

    code, created = server.post_json(f"/v1/jobs/{layout}/build", {})
    assert code == 202, created
    build = created["job_id"]
    status = server.wait(build)
    assert status["state"] == "succeeded" and status["kind"] == "build" and status["parent"] == layout
    assert_published_in_order(status, LABELS)
    built = server.get(f"/v1/jobs/{build}/scene")
    full = server.get(f"/v1/jobs/{finished_job}/scene")
    assert "stage" not in built and built["stages"] == 2 and built["camera"] == full["camera"]
    ignore = ("timings_s",)
    assert {k: v for k, v in built.items() if k not in ignore} == {k: v for k, v in full.items() if k not in ignore}
    names = ["instance_1.glb", "instance_4.glb", "proxy_1.glb", "proxy_4.glb", "scene.glb"]
    assert files(server, build, names) == files(server, finished_job, names)  # byte for byte


def test_build_is_refused_unless_the_parent_is_a_finished_layout(server, small_scene, finished_job):
    code, body = server.post_json(f"/v1/jobs/{finished_job}/build", {})
    assert code == 409 and body["error"]["code"] == "wrong_state" and "regenerate" in body["error"]["hint"]
    code, body = server.post_json(f"/v1/jobs/{'0' * 32}/build", {})
    assert code == 404 and body["error"]["hint"]
    slow = submit_layout(server, small_scene, steps=60)  # still queued or running when build is asked
    code, body = server.post_json(f"/v1/jobs/{slow}/build", {})
    assert code == 409 and body["error"]["code"] == "wrong_state" and body["error"]["hint"]
    server.request("DELETE", f"/v1/jobs/{slow}")
    code, body = server.post_json(f"/v1/jobs/{finished_job}/build", {"labels": [1]})
    assert code == 400  # build takes no options


def test_refine_and_regenerate_of_a_layout_are_layouts(server, small_scene):
    layout = submit_layout(server, small_scene)
    assert server.wait(layout)["state"] == "succeeded"
    parent = server.get(f"/v1/jobs/{layout}/scene")
    code, created = server.post_json(f"/v1/jobs/{layout}/refine", {"transforms": {"1": SHIFT}, "strength": 0.7})
    assert code == 202, created
    status = server.wait(created["job_id"])
    assert status["state"] == "succeeded" and [e["event"] for e in status["events"]] == ["layout"]
    refined = server.get(f"/v1/jobs/{created['job_id']}/scene")
    assert refined["stage"] == "layout" and refined["refine"]["resampled"] == []
    assert refined["refine"]["moved_only"] == [1]
    moved, kept = refined["instances"]
    before = parent["instances"][0]
    assert moved["bbox"]["min"][0] == pytest.approx(before["bbox"]["min"][0] + 0.125, abs=1 / 64)
    assert kept == parent["instances"][1] and moved["file"] is None
    child, original = (files(server, job, ["proxy_1.glb", "proxy_4.glb"]) for job in (created["job_id"], layout))
    assert child["proxy_4.glb"] == original["proxy_4.glb"] and child["proxy_1.glb"] != original["proxy_1.glb"]
    shift = read_instance_mesh(child["proxy_1.glb"]).vertices.min(0) - read_instance_mesh(
        original["proxy_1.glb"]).vertices.min(0)
    assert shift[0] == pytest.approx(0.125, abs=1 / 64)
    code, build = server.post_json(f"/v1/jobs/{created['job_id']}/build", {})  # Build Meshes works on it
    assert code == 202 and server.wait(build["job_id"])["state"] == "succeeded"
    assert all(e["file"] for e in server.get(f"/v1/jobs/{build['job_id']}/scene")["instances"])

    code, created = server.post_json(f"/v1/jobs/{layout}/regenerate", {"labels": [4], "seeds": {"4": 123}})
    assert code == 202
    status = server.wait(created["job_id"])
    assert status["state"] == "succeeded" and [e["event"] for e in status["events"]] == ["layout"]
    again = server.get(f"/v1/jobs/{created['job_id']}/scene")
    assert again["stage"] == "layout" and again["instances"][0] == parent["instances"][0]
    assert again["instances"][1]["seed"] == 123 and again["instances"][1]["file"] is None


def test_regenerate_and_refine_publish_only_their_own_objects(server, finished_job):
    code, created = server.post_json(f"/v1/jobs/{finished_job}/regenerate", {"labels": [4], "seeds": {"4": 5}})
    assert code == 202
    status = server.wait(created["job_id"])
    assert status["state"] == "succeeded"
    assert_published_in_order(status, [4])
    code, created = server.post_json(f"/v1/jobs/{finished_job}/refine",
                                     {"transforms": {"1": SHIFT}, "strength": 0, "locked": [4]})
    assert code == 202
    status = server.wait(created["job_id"])
    assert status["state"] == "succeeded"
    assert_published_in_order(status, [1])


def test_a_layout_job_learns_its_stage_costs_apart_from_full_generates(service, small_inputs):
    full = submit(service, small_inputs)
    layout = submit(service, small_inputs, until="layout")
    assert wait(service, full)["state"] == "succeeded" and wait(service, layout)["state"] == "succeeded"
    (kinds,) = json.loads((service.settings.data_dir / "stage_costs.json").read_text())["devices"].values()
    assert kinds["layout"]["camera"]["seconds_per_unit"] > 0  # a stage of its own: the job waits for the solve
    assert kinds["generate"]["camera"]["seconds_per_unit"] == 0  # overlapped with stage 2, as before
    assert "stage2" not in kinds["layout"] and "meshes" not in kinds["layout"]  # a layout has no meshes
