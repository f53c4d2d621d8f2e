"""Retention on a real store (SQLite and PostgreSQL): what is forgotten, in which order, what never is,
and the hard limit that refuses samples for now while a real agent outbox keeps them."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

import factories
from mqtt_util import wait_until
from trainer.store import Store, incoming
from trainer.store.retention import DAY, RetentionConfig, RetentionPass, StorageMeter, delete_examples, usage

BACKENDS = pytest.mark.parametrize("store_backend", ["sqlite", "postgresql"], indirect=True)


def _ingest(store: Store, camera: str, n: int, start: int = 0, agent: str = "cam-agent-1",
            uncertainties=None) -> None:
    batch = []
    for i in range(start, start + n):
        u = uncertainties[i - start] if uncertainties else 0.5
        batch.append(incoming(factories.sample(agent_id=agent, camera_id=camera, frame_id=f"{agent}.{camera}.{i:05d}",
                                               jpeg=factories.jpeg(32, 24, seed=hash((camera, i)) % 10_000),
                                               uncertainty=u)))
    store.ingest_samples(batch)


def _pending_ids(store: Store) -> list[int]:
    items, _ = store.queue(limit=1000)
    return [it.id for it in items]


@pytest.fixture
def store(tmp_path, store_backend):
    s = Store(tmp_path / "data")
    s.configure_project(task="classification", labels=("circle", "square", "triangle"))
    yield s
    s.close()


@BACKENDS
def test_limits_evict_least_valuable_first_and_never_labelled_or_test(store: Store):
    rng = random.Random(4)
    _ingest(store, "gate", 12, uncertainties=[rng.random() for _ in range(12)])
    _ingest(store, "yard", 6, start=100, uncertainties=[rng.random() for _ in range(6)])
    ids = _pending_ids(store)
    labelled, test_split = ids[-2:], ids[-4:-2]  # the least valuable items: exactly what eviction would pick
    for i in labelled:
        store.label(i, "r", "label", label="circle")
    store.set_splits({i: "test" for i in test_split})
    before = usage(store.db.read())
    assert before.examples["unreviewed"] == 16 and before.examples["labeled"] == 2
    assert before.bytes["unreviewed"] > 0 and before.total_bytes >= sum(before.bytes.values()) // 2

    rest = [i for i in _pending_ids(store) if i not in test_split]  # queue order, best first
    cfg = RetentionConfig(per_camera_max_count=8, unreviewed_max_count=10)
    result = RetentionPass(store, cfg).run_once()
    after = _pending_ids(store)
    assert set(labelled) | set(test_split) <= {e for e in ids if _exists(store, e)}
    kept = [i for i in after if i not in test_split]
    # What is kept is the head of the queue as it was: eviction removed from its tail.
    assert kept == rest[:len(kept)]
    assert len(after) <= 10 + len(test_split)
    assert result.deleted.get("unreviewed_camera_limit", 0) + result.deleted.get("unreviewed_limit", 0) \
        == 16 - len(after)
    assert store.counters()["retention_unreviewed_limit"] >= 1
    now = usage(store.db.read())
    assert now.total_bytes < before.total_bytes and now.examples["labeled"] == 2
    assert RetentionPass(store, cfg).run_once().total == 0  # nothing left over the limits


def _exists(store: Store, example_id: int) -> bool:
    return store.db.read().execute("SELECT 1 FROM examples WHERE id = ?", [example_id]).fetchone() is not None


@BACKENDS
def test_rejected_and_skipped_pruned_after_their_days_in_bounded_passes(store: Store):
    _ingest(store, "gate", 10)
    ids = _pending_ids(store)
    for i in ids[:4]:
        store.label(i, "r", "reject")
    for i in ids[4:7]:
        store.label(i, "r", "skip")
    store.set_splits({ids[0]: "test"})  # a frozen test example is never pruned, rejected or not
    cfg = RetentionConfig(rejected_days=3, skipped_days=1, max_deletes_per_pass=2)
    assert RetentionPass(store, cfg).run_once().total == 0  # too young
    later = RetentionPass(store, cfg, clock=lambda: time.time() + 2 * DAY)
    assert later.run_once().deleted == {"skipped_age": 2}  # bounded: two per pass
    assert later.run_once().deleted == {"skipped_age": 1}
    much_later = RetentionPass(store, cfg, clock=lambda: time.time() + 4 * DAY)
    assert much_later.run_once().deleted == {"rejected_age": 2}
    assert much_later.run_once().deleted == {"rejected_age": 1}
    assert much_later.run_once().total == 0
    assert _exists(store, ids[0]) and store.count("pending_review") == 3
    assert store.count() == 4


@BACKENDS
def test_age_limit_and_a_delete_recheck_keeps_what_was_labelled_meanwhile(store: Store):
    _ingest(store, "gate", 5)
    ids = _pending_ids(store)
    cfg = RetentionConfig(unreviewed_max_age_days=1)
    plan = RetentionPass(store, cfg, clock=lambda: time.time() + 2 * DAY).plan()
    assert [reason for reason, _ in plan] == ["unreviewed_age"] and sorted(plan[0][1]) == sorted(ids)
    store.label(ids[0], "r", "label", label="square")  # labelled after the plan was made
    n, _freed = store.write(lambda db: delete_examples(db, plan[0][1], ("pending_review",)))
    assert n == 4 and _exists(store, ids[0]) and store.count() == 1
    with pytest.raises(ValueError):
        store.write(lambda db: delete_examples(db, [ids[0]], ("labeled",)))


def test_meter_refuses_over_the_hard_limit(tmp_path):
    with Store(tmp_path / "data") as store:
        meter = StorageMeter(hard_limit_bytes=3000)
        meter.refresh(store)
        assert meter.admit() and meter.total() == 0
        _ingest(store, "gate", 3)
        meter.added(900)
        assert meter.admit()
        meter.refresh(store)
        assert meter.total() == usage(store.db.read()).total_bytes
        meter.added(3000)
        assert not meter.admit() and meter.full()
        assert StorageMeter(None).admit()


# --- the hard limit end to end: a real collector, a real agent outbox and uplink ------------------

def _agent(broker, tmp_path: Path, frames: int):
    from agent_helpers import outbox_uplink, put_sample

    outbox, uplink = outbox_uplink(broker, tmp_path)
    for i in range(frames):
        put_sample(outbox, factories.sample(frame_id=f"cam-agent-1.gate.{i:05d}", jpeg=factories.jpeg(64, 48, seed=i)))
    return outbox, uplink


def test_store_full_refuses_for_now_and_the_agent_keeps_and_resends(broker, tmp_path):
    from trainer.server.config import ServerConfig
    from trainer.server.service import Service

    frames = 20
    cfg = ServerConfig.model_validate({
        "mqtt": {"host": broker.host, "port": broker.port, "batch_ms": 20},
        "store": {"data_dir": str(tmp_path / "data")},
        "retention": {"hard_limit_bytes": 1, "interval_s": 0.2}})
    svc = Service(cfg).start()
    _ingest(svc.store, "yard", 1, agent="cam-agent-2")  # one image: the store is over its one-byte limit
    svc.meter.refresh(svc.store)
    outbox, uplink = _agent(broker, tmp_path / "agent", frames)
    uplink.start()
    try:
        # Over the limit from the start: every sample is refused for now, none stored, none receipted.
        assert wait_until(lambda: svc.metrics.get("dead_letters", "store_full") >= 2 * frames, 30)
        assert svc.store.count() == 1 and outbox.stats().pending == frames
        assert outbox.stats().rejected == 0 and outbox.stats().delivered == 0
        # Room again (a larger limit, as after a retention pass or an operator's change): the resends land.
        svc.meter.hard_limit = 10**9
        assert wait_until(lambda: outbox.stats().pending == 0, 30), outbox.stats()
        assert svc.store.count() == frames + 1 and outbox.stats().delivered == frames
        assert sorted(svc.store.frame_ids())[:-1] == [f"cam-agent-1.gate.{i:05d}" for i in range(frames)]
        from trainer.server.metrics import render
        svc.meter.refresh(svc.store)  # the retention thread does this every interval_s
        text = render(svc)
        assert 'edgeloop_dead_letters_total{reason="store_full"}' in text
        assert 'edgeloop_storage_examples{category="unreviewed"} 21.0' in text
        assert "edgeloop_storage_limit_bytes 1.0" in text and "edgeloop_store_full 0.0" in text
    finally:
        uplink.stop()
        outbox.close()
        svc.stop()


@BACKENDS
def test_storage_api_reports_usage_by_category(tmp_path, store_backend):
    from fastapi.testclient import TestClient

    from trainer.server.app import create_app
    from trainer.server.config import ServerConfig

    token = "test-token-0123456789abcdef"
    cfg = ServerConfig.model_validate({"mqtt": {"enabled": False}, "store": {"data_dir": str(tmp_path / "d")},
                                       "project": {"task": "classification",
                                                   "labels": ["circle", "square", "triangle"]},
                                       "retention": {"hard_limit_bytes": 10**9, "rejected_days": 2}})
    with TestClient(create_app(cfg, token)) as client:
        store = client.app.state.service.store
        _ingest(store, "gate", 4)
        ids = _pending_ids(store)
        store.label(ids[0], "r", "label", label="circle")
        store.label(ids[1], "r", "reject")
        r = client.get("/api/storage", headers={"Authorization": f"Bearer {token}"})
        assert client.get("/api/storage").status_code == 401
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: v["examples"] for k, v in body["categories"].items()} == \
        {"labeled": 1, "unreviewed": 2, "rejected": 1, "skipped": 0}
    assert body["categories"]["unreviewed"]["bytes"] > 0 and body["total_bytes"] > 0
    assert body["limit_bytes"] == 10**9 and body["full"] is False and body["policies"]["rejected_days"] == 2
