"""The store on real SQLite files: writer thread, migrations, review actions, trainer views."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

import factories
from trainer.store import (Conflict, DeadLetter, InvalidLabel, NotFound, QueueFilter, Store, StoreError, incoming,
                           new_example)
from trainer.store.db import Database
from trainer.store.migrations import migrate
from trainer.store.ranking import duplicate_clusters, expected_value


def ingest(store: Store, samples) -> None:
    if samples and not store.project().labels:  # as [project] labels would: agents never define them
        store.configure_project(task=samples[0].task, labels=samples[0].labels)
    store.ingest_samples([incoming(s) for s in samples])


def frames(n: int, start: int = 0, **changes):
    return [factories.sample(frame_id=f"cam-agent-1.gate.{i:06d}", jpeg=factories.jpeg(seed=i), **changes)
            for i in range(start, start + n)]


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "data") as s:
        yield s


def test_migrations_are_named_and_applied_once(tmp_path: Path) -> None:
    Store(tmp_path).close()
    with Store(tmp_path) as store:
        rows = store.db.read().execute("SELECT name FROM _migrations WHERE migration_set = 'edgeloop.store'"
                                       " ORDER BY id").fetchall()
    names = [r[0] for r in rows]
    assert names[:2] == ["0001_initial", "0002_image_blobs"] and "0004_example_embeddings" in names
    assert names == sorted(set(names))  # each once, in order


@pytest.mark.sqlite_only
def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    Store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "edgeloop.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.sqlite_only
def test_write_runs_on_one_thread_and_failures_roll_back_alone(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db", migrate=migrate)
    threads = set()

    def ok(n):
        def fn(conn):
            threads.add(threading.get_ident())
            conn.execute("INSERT INTO counters (name, value) VALUES (?, 1)", [f"c{n}"])
            return n
        return fn

    def bad(conn):
        conn.execute("INSERT INTO counters (name, value) VALUES ('bad', 1)")
        raise RuntimeError("boom")

    futures = [db.write_async(ok(i)) for i in range(50)] + [db.write_async(bad)]
    assert [f.result() for f in futures[:50]] == list(range(50))
    with pytest.raises(RuntimeError, match="boom"):
        futures[-1].result()
    names = {r[0] for r in db.read().execute("SELECT name FROM counters")}
    assert names == {f"c{i}" for i in range(50)}
    assert len(threads) == 1 and threading.get_ident() not in threads
    db.close()


def test_ingest_dedups_by_frame_id_and_keeps_the_bytes(store: Store) -> None:
    batch = frames(5)
    ingest(store, batch)
    ingest(store, batch[:3] + frames(2, start=5))
    assert store.count() == 7
    assert sorted(store.frame_ids()) == sorted(s.frame_id for s in batch + frames(2, start=5))
    counters = store.counters()
    assert counters["ingest_stored"] == 7 and counters["ingest_duplicates"] == 3
    item = store.queue()[0][0]
    data, media = store.image(item.id)
    assert media == "image/jpeg" and data == {s.frame_id: s.jpeg for s in batch + frames(2, start=5)}[item.frame_id]
    assert store.project().task == "classification"
    assert store.project().labels == ("circle", "square", "triangle")


def test_queue_orders_by_expected_value_and_filters(store: Store) -> None:
    sure = factories.sample(frame_id="a.g.sure", uncertainty=0.05, jpeg=factories.jpeg(seed=1))
    unsure = factories.sample(frame_id="a.g.unsure", uncertainty=0.95, jpeg=factories.jpeg(seed=2))
    other = factories.sample(frame_id="a.g.other", uncertainty=0.5, camera_id="dock", strategy="entropy",
                             model_version=4, jpeg=factories.jpeg(seed=3))
    ingest(store, [sure, unsure, other])
    items, total = store.queue()
    assert total == 3 and [i.frame_id for i in items] == ["a.g.unsure", "a.g.other", "a.g.sure"]
    assert [i.frame_id for i in store.queue(QueueFilter(camera="dock"))[0]] == ["a.g.other"]
    assert store.queue(QueueFilter(model_version=4))[1] == 1
    assert store.queue(QueueFilter(strategy="margin"))[1] == 2
    assert store.queue(QueueFilter(predicted="circle"))[1] == 3
    assert store.queue(QueueFilter(agent="nobody"))[1] == 0
    assert [i.frame_id for i in store.queue(limit=1, offset=1)[0]] == ["a.g.other"]


def test_rarity_and_age_rank_pure_function() -> None:
    assert expected_value(0.5, 0, 100, 0) > expected_value(0.5, 100, 100, 0)  # rare class first
    assert expected_value(0.5, 10, 100, 0) > expected_value(0.5, 10, 100, 7 * 86400)  # recent first
    assert expected_value(0.9, 100, 100, 0) > expected_value(0.1, 100, 100, 0)
    assert expected_value(5.0, 0, 0, 0) == expected_value(1.0, 0, 0, 0)  # clamped


def test_label_accept_reject_skip_and_undo(store: Store) -> None:
    ingest(store, frames(4))
    ids = [i.id for i in store.queue()[0]]
    assert store.label(ids[0], "ann", "accept").label == "circle"
    assert store.label(ids[1], "ann", "label", label="square").label == "square"
    assert store.label(ids[2], "bob", "reject").status == "rejected"
    assert store.label(ids[3], "bob", "skip").status == "skipped"
    with pytest.raises(InvalidLabel):
        store.label(ids[3], "bob", "label", label="hexagon")
    with pytest.raises(NotFound):
        store.label(999, "bob", "skip")
    assert store.undo("ann") == ids[1]
    assert store.item(ids[1]).status == "pending_review" and store.item(ids[1]).label is None
    assert store.undo("ann") == ids[0]
    with pytest.raises(NotFound):
        store.undo("ann")
    store.label(ids[0], "ann", "label", label="square")
    store.label(ids[0], "bob", "label", label="triangle")
    with pytest.raises(Conflict):
        store.undo("ann")  # bob changed it since
    assert store.corrected_since_last_round() == 1
    assert [e.label for e in store.examples()] == ["triangle"]
    history = store.label_history(ids[0])
    assert [(h["user"], h["action"], h["after"]["label"]) for h in history] == [
        ("ann", "accept", "circle"), ("ann", "label", "square"), ("bob", "label", "triangle")]
    assert history[0]["undone_at"] is not None and history[2]["undone_at"] is None


def test_detection_boxes_are_validated(store: Store) -> None:
    ingest(store, [factories.detection_sample(frame_id="d.g.1")])
    item = store.queue()[0][0]
    assert item.prediction["boxes"][0]["label"] == "car" and item.predicted_label == "car"
    accepted = store.label(item.id, "ann", "accept")
    assert [b["label"] for b in accepted.boxes] == ["car", "person"]
    fixed = store.label(item.id, "ann", "label", boxes=[{"x1": 0.1, "y1": 0.1, "x2": 0.5, "y2": 0.6, "label": "person"}])
    assert fixed.boxes == [{"x1": 0.1, "y1": 0.1, "x2": 0.5, "y2": 0.6, "label": "person"}]
    for bad in ([{"x1": 0.5, "y1": 0.1, "x2": 0.2, "y2": 0.6, "label": "car"}],
                [{"x1": 0.1, "y1": 0.1, "x2": 0.2, "y2": 0.6, "label": "tree"}], None):
        with pytest.raises(InvalidLabel):
            store.label(item.id, "ann", "label", boxes=bad)
    assert store.label(item.id, "ann", "label", boxes=[]).boxes == []  # no objects is a valid label
    ex = store.examples()[0]
    assert ex.boxes == () and ex.source == "edge" and ex.image_path.is_file()


def test_splits_stats_warnings_and_duplicates(store: Store, tmp_path: Path) -> None:
    img = factories.jpeg(width=64, height=64, seed=7)
    near = factories.jpeg(width=64, height=64, seed=7, quality=60)  # same picture, re-encoded
    rows = []
    for i, (data, label) in enumerate([(img, "cat"), (near, "cat")] + [(factories.jpeg(seed=100 + i), "cat")
                                                                         for i in range(20)] +
                                      [(factories.jpeg(seed=200), "dog")]):
        rows.append(new_example(data, label=label, origin=f"t:{i}"))
    assert store.add_examples(rows, task="classification", labels=["cat", "dog"]) == 23
    assert store.add_examples(rows, task="classification") == 0  # same origins
    with pytest.raises(StoreError):
        store.add_examples(rows, task="detection")
    ids = [e.id for e in store.examples()]
    store.set_splits({ids[0]: "val", ids[1]: "test"})
    with pytest.raises(ValueError):
        store.set_splits({ids[0]: "holdout"})
    assert [e.id for e in store.examples("val")] == [ids[0]]
    stats = store.stats()
    assert stats["counts"]["cat"] == {"train": 0, "val": 1, "test": 1, "unassigned": 20}
    assert any("'dog' has 1" in w for w in stats["warnings"])
    assert any("dominates" in w for w in stats["warnings"])
    assert "300" in stats["guidance"] and "1000" in stats["guidance"]
    assert [int(ids[0]), int(ids[1])] in stats["duplicate_clusters"]


def test_duplicate_clusters_pure() -> None:
    h = 0x0F0F_0F0F_0F0F_0F0F
    clusters = duplicate_clusters([(1, h), (2, h ^ 0b111), (3, ~h), (4, h ^ (1 << 63))], max_distance=4)
    assert clusters == [[1, 2, 4]]


def test_fleet_and_dead_letters(store: Store) -> None:
    store.record_fleet([factories.status(at=100.0)], [factories.telemetry(fps=12.5, outbox_depth=4)])
    store.record_fleet([factories.status(at=50.0, model_version=1)], [])  # older: ignored
    agent = store.fleet()[0]
    assert (agent["state"], agent["fps"], agent["outbox_depth"], agent["cameras"]) == ("online", 12.5, 4, ["gate"])
    assert agent["model_version"] == 3  # (an older "offline" is a last will: tests/test_hardening_presence.py)
    assert not agent["stale"] and store.fleet(now=time.time() + 61)[0]["stale"]
    store.record_dead_letters([DeadLetter("t", "bad_magic", "x", 10, b"0123456789" * 100, 1.0)])
    assert store.dead_letter_counts() == {"bad_magic": 1}
    assert len(store.dead_letters()[0].prefix) == 256


def test_phashes_filled_after_ingest_and_undecodable_frames_rejected(store: Store) -> None:
    good = factories.sample(frame_id="a.g.ok", jpeg=factories.jpeg(width=64, height=48, seed=1))
    jpeg = factories.jpeg(width=64, height=48, seed=2)
    sof = jpeg.index(b"\xff\xc0")
    broken = factories.sample(frame_id="a.g.broken", jpeg=jpeg[:sof + 40] + bytes(200))  # SOF intact, scan garbage
    twin = factories.sample(frame_id="a.g.twin", jpeg=factories.jpeg(width=64, height=48, seed=1, quality=70))
    ingest(store, [good, broken, twin])
    assert store.fill_phashes() == 3 and store.fill_phashes() == 0
    statuses = {i.frame_id: i.status for i in store.queue(QueueFilter(status="rejected"))[0]}
    assert statuses == {"a.g.broken": "rejected"}
    assert store.counters()["undecodable_images"] == 1
    pending = {i.frame_id: i.id for i in store.queue()[0]}
    assert [pending["a.g.ok"], pending["a.g.twin"]] in store.stats()["duplicate_clusters"]


def test_corrections_count_from_the_last_round_that_used_them(store: Store) -> None:
    ingest(store, frames(3))
    ids = [i.id for i in store.queue()[0]]
    store.label(ids[0], "ann", "label", label="square")
    store.write(lambda db: db.execute("INSERT INTO rounds (started, state) VALUES (?, 'failed')", [time.time()]))
    store.label(ids[1], "ann", "label", label="square")
    assert store.corrected_since_last_round() == 2
    store.write(lambda db: db.execute("INSERT INTO rounds (started, state) VALUES (?, 'done')", [time.time()]))
    store.label(ids[2], "ann", "label", label="circle")
    assert store.corrected_since_last_round() == 1
    assert store.item(ids[2]).round_added == 3  # the batch of the next round


def test_store_url_from_the_server_config(tmp_path: Path, store_url: str | None, monkeypatch) -> None:
    from pydantic import ValidationError

    from trainer.server.config import ServerConfig

    monkeypatch.delenv("EDGELOOP_STORE_URL", raising=False)
    data = tmp_path / "data"
    assert ServerConfig.model_validate({"store": {"data_dir": str(data)}}).store.store_url() == \
        f"sqlite:///{data / 'edgeloop.db'}"
    url = store_url or f"sqlite:///{tmp_path / 'elsewhere' / 'x.db'}"
    cfg = ServerConfig.model_validate({"store": {"data_dir": str(data), "url": url}})
    assert cfg.store.store_url() == url
    with Store(cfg.store.data_dir, url=cfg.store.store_url()) as s:
        s.configure_project(labels=("a",))
    if store_url is None:
        assert (tmp_path / "elsewhere" / "x.db").exists() and not (data / "edgeloop.db").exists()
    monkeypatch.setenv("EDGELOOP_STORE_URL", "sqlite:////tmp/from-env.db")
    assert cfg.store.store_url() == "sqlite:////tmp/from-env.db"  # the environment wins (passwords stay out of files)
    with pytest.raises(ValidationError, match="store.url"):
        ServerConfig.model_validate({"store": {"url": "mysql://db/edgeloop"}})
