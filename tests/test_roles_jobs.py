"""Round jobs on a real store (SQLite and PostgreSQL): one active round, claims, leases, cancel, fencing."""

from __future__ import annotations

import threading

import pytest

from trainer.rounds.jobs import MAX_ATTEMPTS, RoundJobs
from trainer.rounds.worker import Busy
from trainer.store import Store

BACKENDS = pytest.mark.parametrize("store_backend", ["sqlite", "postgresql"], indirect=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path, store_backend):
    s = Store(tmp_path / "data")
    yield s
    s.close()


@BACKENDS
def test_one_active_round_claimed_once_and_released_when_its_lease_expires(store):
    clock = Clock()
    a, b = RoundJobs(store, "worker-a", 10, clock), RoundJobs(store, "worker-b", 10, clock)
    rid = a.enqueue("batch reached")
    with pytest.raises(Busy):
        b.enqueue("manual")
    assert a.active().state == "queued"
    job = a.claim()
    assert job.round_id == rid and job.owner == "worker-a" and job.attempts == 1 and job.state == "running"
    assert b.claim() is None  # held
    clock.now += 8
    assert a.heartbeat(rid, [{"epoch": 0, "loss": 1.0}]) == (True, False)  # renewed to now + 10
    clock.now += 8
    assert b.claim() is None
    clock.now += 3  # worker-a went silent: its lease has passed
    taken = b.claim()
    assert taken.round_id == rid and taken.owner == "worker-b" and taken.attempts == 2 and taken.epochs == []
    assert a.heartbeat(rid) == (False, False)  # the old owner learns it lost the round
    assert not a.finish(rid, "done", {"version": 9})  # and cannot end it
    assert b.finish(rid, "done", {"version": 2}, epochs=[{"epoch": 0}])
    done = a.get(rid)
    assert done.state == "done" and done.detail["version"] == 2 and done.epochs == [{"epoch": 0}]
    assert a.active() is None and a.last_finished().round_id == rid
    assert a.enqueue("next") == rid + 1  # the next round may start
    assert a.counts() == {"done": 1, "queued": 1}


@BACKENDS
def test_cancel_from_any_process(store):
    clock = Clock()
    web, worker = RoundJobs(store, "web", 10, clock), RoundJobs(store, "worker", 10, clock)
    first = web.enqueue("manual")
    assert web.request_cancel().state == "cancelled"  # queued: ends at once
    assert worker.claim() is None and web.active() is None
    second = web.enqueue("manual")
    assert worker.claim().round_id == second
    assert web.request_cancel().cancel_requested
    assert worker.heartbeat(second) == (True, True)  # the worker sees it at its next heartbeat
    assert worker.finish(second, "cancelled", {"error": "cancelled"})
    assert web.request_cancel() is None
    assert [web.get(i).state for i in (first, second)] == ["cancelled", "cancelled"]


@BACKENDS
def test_a_round_whose_workers_keep_dying_fails_after_the_attempt_limit(store):
    clock = Clock()
    rid = RoundJobs(store, "w0", 5, clock).enqueue("batch", claim=True)
    for i in range(1, MAX_ATTEMPTS):
        clock.now += 6
        assert RoundJobs(store, f"w{i}", 5, clock).claim().attempts == i + 1
    clock.now += 6
    assert RoundJobs(store, "last", 5, clock).claim() is None
    job = RoundJobs(store, "x", 5, clock).get(rid)
    assert job.state == "failed" and "stopped 3 times" in job.detail["error"]


@BACKENDS
def test_concurrent_claims_give_the_job_to_exactly_one(store):
    RoundJobs(store, "web", 30).enqueue("batch")
    got: list = []
    barrier = threading.Barrier(6)

    def claim(i: int) -> None:
        barrier.wait()
        got.append(RoundJobs(store, f"w{i}", 30).claim())
    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len([j for j in got if j is not None]) == 1


@BACKENDS
def test_rounds_without_an_owner_are_failed_at_start_up(store):
    import time
    rid = store.write(lambda db: db.execute("INSERT INTO rounds (started, state) VALUES (?, 'running')",
                                            [time.time()]).lastrowid)
    owned = RoundJobs(store, "w", 30).enqueue("x", claim=True)
    assert RoundJobs(store, "new", 30).fail_orphans() == 1
    jobs = RoundJobs(store, "new", 30)
    assert jobs.get(rid).state == "failed" and jobs.get(owned).state == "running"


@BACKENDS
def test_a_round_ended_by_another_worker_is_not_overwritten_by_a_late_finish(store):
    clock = Clock()
    a, b = RoundJobs(store, "worker-a", 60, clock), RoundJobs(store, "worker-b", 60, clock)
    rid = a.enqueue("test", claim=True)
    b.request_cancel()  # flagged while worker-a is silent
    clock.now += 120  # worker-a's lease passes: worker-b's claim ends the round as cancelled
    assert b.claim() is None
    ended = a.get(rid)
    assert ended.state == "cancelled" and ended.finished is not None
    assert not a.finish(rid, "done", {"model": "v7"})  # the late finish of the old owner is refused
    after = a.get(rid)
    assert after.state == "cancelled" and "model" not in after.detail
    assert not b.finish(rid, "done", {"model": "v8"})  # so is anyone's finish of an ended round
