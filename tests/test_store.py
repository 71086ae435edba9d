"""The job store: damaged records never stop it, a disk that cannot be written never loses a record."""

from __future__ import annotations

import errno
import json
import logging
import time

import pytest
from faults import FaultyDisk

from iscene_server.errors import DiskFullError, StorageError
from iscene_server.jobs.store import FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore

INPUTS = {"image": b"png-bytes", "labels": b"label-bytes"}


def write_record(store: JobStore, record_id: str, **fields) -> None:
    folder = store.root / record_id
    folder.mkdir(parents=True)
    data = {"id": record_id, "kind": "generate", "state": SUCCEEDED, "created": 1.0, "params": {}, **fields}
    (folder / "job.json").write_text(json.dumps(data))


DAMAGE = [{"created": "yesterday"}, {"state": "bogus"}, {"params": [1, 2]}, {"kind": "nuke"},
          {"started": "noon"}, {"error": "boom"}, {"error": {"code": 1}}, {"parent": "../../etc"},
          {"extra": True}, {"created": True}]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda d: next(iter(d)) + "=" + json.dumps(d[next(iter(d))]))
def test_a_damaged_record_is_skipped_with_one_log_line(tmp_path, caplog, damage):
    good = JobStore(tmp_path).create("generate", {}, INPUTS)
    write_record(JobStore(tmp_path), "a" * 32, **damage)
    with caplog.at_level(logging.WARNING, logger="iscene.jobs"):
        store = JobStore(tmp_path)
    assert [r.id for r in store.list()] == [good.id]  # listing and sorting work; the other job is there
    assert len([r for r in caplog.records if "a" * 32 in r.message]) == 1
    assert (store.root / ("a" * 32) / "job.json").is_file()  # left alone, not deleted


def test_unparsable_and_foreign_folders_do_not_stop_the_store(tmp_path):
    store = JobStore(tmp_path)
    (store.root / ("b" * 32)).mkdir()
    (store.root / ("b" * 32) / "job.json").write_text('{"id": ')
    (store.root / "notes.txt").write_text("hello")
    (store.root / ("c" * 32)).mkdir()
    (store.root / ("c" * 32) / "job.json").write_text("[1, 2]")
    assert JobStore(tmp_path).list() == []


def test_a_failed_submit_leaves_no_folder(tmp_path, monkeypatch):
    store = JobStore(tmp_path)
    disk = FaultyDisk(monkeypatch, tmp_path)
    for at in (1, 2, 3):  # the image, the label map, the record
        disk.full(at=at)
        with pytest.raises(DiskFullError) as caught:
            store.create("generate", {}, INPUTS)
        assert str(tmp_path) not in str(caught.value) and "free disk space in --data-dir" in caught.value.hint
        assert list(store.root.iterdir()) == [] and store.list() == []
    disk.heal()
    assert store.create("generate", {}, INPUTS).state == QUEUED and store.problem is None


def test_a_record_the_disk_cannot_take_is_saved_when_space_returns(tmp_path, monkeypatch):
    store = JobStore(tmp_path)
    job = store.create("generate", {}, INPUTS)
    disk = FaultyDisk(monkeypatch, tmp_path)
    disk.full()
    with pytest.raises(DiskFullError):
        store.update(job.id, state=FAILED, finished=time.time(), error={"code": "x", "message": "m", "hint": "h"})
    assert store.get(job.id).state == FAILED  # in memory
    assert json.loads((store.root / job.id / "job.json").read_text())["state"] == QUEUED  # the last good record
    assert not (store.root / job.id / "job.json.partial").exists()  # never a partial record left
    assert store.check_writable().code == "disk_full"
    disk.heal()
    assert store.check_writable(force=True) is None
    assert json.loads((store.root / job.id / "job.json").read_text())["state"] == FAILED
    assert JobStore(tmp_path).get(job.id).state == FAILED


def test_the_next_successful_write_saves_the_unsaved_records(tmp_path, monkeypatch):
    store = JobStore(tmp_path)
    first, second = store.create("generate", {}, INPUTS), store.create("generate", {}, INPUTS)
    disk = FaultyDisk(monkeypatch, tmp_path)
    disk.full()
    with pytest.raises(DiskFullError):
        store.update(first.id, state=SUCCEEDED)
    disk.heal()
    store.update(second.id, state=RUNNING)
    assert store.problem is None
    assert {r.id: r.state for r in JobStore(tmp_path).list()} == {first.id: SUCCEEDED, second.id: RUNNING}


def test_recover_on_a_read_only_disk_fails_running_jobs_in_memory(tmp_path, monkeypatch):
    store = JobStore(tmp_path)
    job = store.create("generate", {}, INPUTS)
    store.update(job.id, state=RUNNING)
    queued = store.create("generate", {}, INPUTS)
    FaultyDisk(monkeypatch, tmp_path).full(errno.EROFS)
    restarted = JobStore(tmp_path)
    assert [r.id for r in restarted.recover()] == [queued.id]
    assert restarted.get(job.id).state == FAILED and restarted.get(job.id).error["code"] == "server_restarted"
    problem = restarted.problem
    assert isinstance(problem, StorageError) and problem.code == "storage_unwritable"
    assert "--data-dir" in problem.message and str(tmp_path) not in problem.message + problem.hint


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"format": "other"})])
def test_a_damaged_scene_manifest_is_reported_without_the_servers_paths(tmp_path, content):
    """A parent job's damaged scene.json reaches the client as a message: it names the file, never the disk."""
    from iscene_server.engine.results import SCENE_JSON, read_manifest
    from iscene_server.errors import InputError

    folder = tmp_path / "0123abcd"
    folder.mkdir()
    (folder / SCENE_JSON).write_text(content)
    with pytest.raises(InputError) as caught:
        read_manifest(folder)
    assert f"0123abcd/{SCENE_JSON}" in caught.value.message and str(tmp_path) not in str(caught.value)
    assert "generate it again" in caught.value.hint
