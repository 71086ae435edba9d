"""Pruning deletes users' results: only finished jobs, by age, then oldest first down to the size limit, and
never the parent of a job still to run."""

from __future__ import annotations

import pytest

from iscene_server.jobs.store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore

DAY = 86400.0
NOW = 100 * DAY


@pytest.fixture
def store(tmp_path) -> JobStore:
    return JobStore(tmp_path)


def job(store: JobStore, state: str, finished_days_ago: float | None, size: int = 10, parent: str | None = None):
    record = store.create("regenerate" if parent else "generate", {}, {"image": b"x" * size}, parent=parent)
    finished = None if finished_days_ago is None else NOW - finished_days_ago * DAY
    return store.update(record.id, state=state, finished=finished, created=(finished or NOW) - 1).id


def test_age_removes_only_old_finished_jobs(store):
    old = [job(store, state, 20) for state in (SUCCEEDED, FAILED, CANCELLED)]
    young = job(store, SUCCEEDED, 1)
    queued, running = job(store, QUEUED, None), job(store, RUNNING, None)
    assert sorted(store.prune(14 * DAY, None, now=NOW)) == sorted(old)
    assert {r.id for r in store.list()} == {young, queued, running}
    assert all(not (store.root / job_id).exists() for job_id in old)


def test_size_removes_oldest_finished_first_until_under_the_limit(store):
    oldest, middle, newest = (job(store, SUCCEEDED, days, size=1000) for days in (3, 2, 1))
    queued = job(store, QUEUED, None, size=1000)
    limit = store.size(middle) + store.size(newest) + store.size(queued)
    assert store.prune(None, limit, now=NOW) == [oldest]
    assert store.prune(None, 0, now=NOW) == [middle, newest]  # queued jobs stay, even over the limit
    assert [r.id for r in store.list()] == [queued]


def test_a_parent_of_a_pending_child_is_kept(store):
    parent = job(store, SUCCEEDED, 30, size=1000)
    child = job(store, QUEUED, None, parent=parent)
    other = job(store, SUCCEEDED, 30)
    assert store.prune(14 * DAY, 0, now=NOW) == [other]
    assert store.get(parent) and (store.root / parent / "inputs").is_dir()
    store.update(child, state=SUCCEEDED, finished=NOW)
    assert store.prune(14 * DAY, None, now=NOW) == [parent]  # once the child is done, the parent may go
    assert [r.id for r in store.list()] == [child]


def test_a_parent_of_a_running_child_is_kept(store):
    parent = job(store, SUCCEEDED, 30)
    job(store, RUNNING, None, parent=parent)
    assert store.prune(14 * DAY, 0, now=NOW) == []


def test_no_limits_remove_nothing(store):
    job(store, SUCCEEDED, 1000, size=10_000)
    assert store.prune(None, None, now=NOW) == []
