"""The review queue's order over a real store: diverse first page with embeddings, expected value without,
and the cold start (typical items of unlabelled dense regions first while the model is weak)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from protocol.codec import decode, encode, topic_for
from protocol.embedding import quantize_embedding
from tests.factories import sample
from trainer.store import ranking
from trainer.store.ranking import QueueConfig
from trainer.store.records import QueueFilter
from trainer.store.store import Store, incoming

NOW = time.time()


def _confusions(n_groups: int = 5, per: int = 12, seed: int = 0) -> list[tuple[int, np.ndarray, float]]:
    """``(group, embedding, uncertainty)``: group 0 is a burst of near-copies, each more uncertain than any other."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(n_groups, 32)) * 3.0
    out = []
    for k in range(n_groups):
        for _ in range(per):
            u = (0.95 if k == 0 else 0.7) + float(g.uniform(0, 0.02))
            out.append((k, centres[k] + g.normal(size=32) * 0.1, u))
    return out


def _store(tmp_path, rows, with_embeddings: bool, config: QueueConfig = QueueConfig(),
           url: str | None = None) -> tuple[Store, dict[str, int]]:
    store = Store(tmp_path / "data", url=url, queue_config=config)
    samples = [sample(frame_id=f"cam-agent-1.gate.{i:06d}", captured_at=NOW, uncertainty=u,
                      scores=(0.4, 0.35, 0.25), embedding=quantize_embedding(e) if with_embeddings else b"")
               for i, (_, e, u) in enumerate(rows)]
    # Through the wire format, as the collector receives them.
    samples = [decode(topic_for(s), encode(s)) for s in samples]
    store.ingest_samples([incoming(s, NOW) for s in samples])
    group = {f"cam-agent-1.gate.{i:06d}": k for i, (k, _, _) in enumerate(rows)}
    return store, group


def _groups(store: Store, group: dict[str, int], limit: int, offset: int = 0) -> list[int]:
    items, _ = store.queue(QueueFilter(), limit, offset, now=NOW)
    return [group[i.frame_id] for i in items]


def test_embeddings_are_stored(tmp_path):
    rows = _confusions(per=2)
    store, _ = _store(tmp_path, rows, True)
    with store:
        got = store.db.read().execute("SELECT count(*) FROM examples WHERE length(embedding) = 32").fetchone()[0]
        assert got == len(rows)


def test_first_page_is_diverse_with_embeddings(tmp_path):
    rows = _confusions()
    store, group = _store(tmp_path, rows, True, QueueConfig(cold_start=False))  # value × distance alone
    with store:
        first = _groups(store, group, 5)
        assert sorted(first) == [0, 1, 2, 3, 4]  # one per confusion, not five copies of group 0
        items, total = store.queue(QueueFilter(), 5, 0, now=NOW)
        assert total == len(rows)
        assert items[0].reason.startswith("queue: uncertain (margin 0.9")
        assert "diverse" in items[1].reason and items[1].reason.endswith("agent: margin 0.05 < 0.2")
        # Paging walks the same order: two pages are the first ten, no item twice.
        ten = [i.id for i in store.queue(QueueFilter(), 10, 0, now=NOW)[0]]
        pages = [i.id for i in store.queue(QueueFilter(), 5, 0, now=NOW)[0] + store.queue(QueueFilter(), 5, 5,
                                                                                           now=NOW)[0]]
        assert ten == pages
        everything = [i.id for i in store.queue(QueueFilter(), 200, 0, now=NOW)[0]]
        assert len(set(everything)) == len(rows)


def test_without_embeddings_the_order_is_expected_value(tmp_path):
    rows = _confusions()
    store, group = _store(tmp_path, rows, False)
    with store:
        assert _groups(store, group, 12) == [0] * 12  # the old ranking: the most uncertain first
        items, _ = store.queue(QueueFilter(), 3, 0, now=NOW)
        assert "no embedding" in items[1].reason
        us = [i.uncertainty for i in store.queue(QueueFilter(), 60, 0, now=NOW)[0]]
        assert us == sorted(us, reverse=True)


def test_past_the_window_the_queue_continues_by_expected_value(tmp_path, monkeypatch):
    monkeypatch.setattr(ranking, "WINDOW", 8)
    rows = _confusions(per=4)
    store, group = _store(tmp_path, rows, True)
    with store:
        spanning = [i.id for i in store.queue(QueueFilter(), 10, 0, now=NOW)[0]]
        later = [i.id for i in store.queue(QueueFilter(), 10, 10, now=NOW)[0]]
        assert len(spanning) == 10 and len(later) == 10 and not set(spanning) & set(later)
        # Within the window (4 of group 0, 4 others) the order still spreads: not group 0 four times first.
        assert len(set(_groups(store, group, 4))) > 1


@pytest.mark.parametrize("bad", [b"\x01", b""])
def test_an_odd_embedding_does_not_break_the_queue(tmp_path, bad):
    rows = _confusions(per=3)
    store, group = _store(tmp_path, rows, True)
    with store:
        store.write(lambda db: db.execute("UPDATE examples SET embedding = ? WHERE id = 1", [bad or None]))
        assert len(store.queue(QueueFilter(), 15, 0, now=NOW)[0]) == 15


def test_items_that_disappear_between_the_reads_of_a_page_are_skipped(tmp_path):
    """Retention may delete an example between the ranking, the facts and the item reads: no KeyError."""
    from trainer.store import review

    store, _ = _store(tmp_path, _confusions(per=2), with_embeddings=True)
    try:
        db = store.db.read()
        ranked = review._ranked(db, " WHERE e.status = ?", ["pending_review"], NOW)
        ids = [i for i, _ in ranked]
        phantom = max(ids) + 1000  # ranked, then deleted before its facts were read
        page = review._diverse_page(db, [(phantom, 99.0), *ranked], 10, 0)
        assert phantom not in [it.id for it in page] and len(page) == 10

        gone = ids[0]  # its facts were read, then it was deleted before the item rows

        class DeletedBetween:
            dialect = db.dialect

            def execute(self, sql, args=()):
                if "e.embedding" in sql:
                    return db.execute(sql, args)
                rows = [r for r in db.execute(sql, args).fetchall() if r[0] != gone]
                return type("Cur", (), {"fetchall": lambda self: rows})()
        page = review._diverse_page(DeletedBetween(), ranked, 10, 0)
        assert gone not in [it.id for it in page] and len(page) == 9
    finally:
        store.close()


# -- cold start ------------------------------------------------------------------------------------------

BLOBS, PER = 14, 10
LABELLED_BLOBS = (1, 2, 3, 4)  # one label in each; the other ten blobs are dense regions with none
WEAK = QueueConfig(labels_per_class=2)  # 3 classes: weak until 6 labels; with 4, a third of a 30-item batch


def _blobs(seed: int = 0) -> list[tuple[int, np.ndarray, float]]:
    """``(blob, embedding, uncertainty)``: 14 well separated blobs of 10; blob 0 is the most uncertain."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(BLOBS, 32)) * 3.0
    return [(k, centres[k] + g.normal(size=32) * 0.5, (0.95 if k == 0 else 0.7) + float(g.uniform(0, 0.02)))
            for k in range(BLOBS) for _ in range(PER)]


def _labelled_store(tmp_path, config: QueueConfig, n_labels: int = len(LABELLED_BLOBS),
                    name: str = "data", url: str | None = None) -> tuple[Store, dict[str, int]]:
    """The blobs ingested into a 3-class project (batch 30), ``n_labels`` blobs given one label each."""
    rows = _blobs()
    store, group = _store(tmp_path / name, rows, True, config, url)
    store.configure_project(labels=("circle", "square", "triangle"), batch_size=30)
    ids = {i.frame_id: i.id for i in store.queue(QueueFilter(), 200, 0, now=NOW)[0]}
    for b in range(1, 1 + n_labels):
        store.label(ids[f"cam-agent-1.gate.{b * PER:06d}"], "ann", "label", "circle")
    return store, group


def _central(rows, index: int) -> bool:
    """Whether row ``index`` is among the most central half of its blob (cosine, as the queue compares)."""
    blob = rows[index][0]
    members = [i for i, r in enumerate(rows) if r[0] == blob]
    x = np.array([rows[i][1] / np.linalg.norm(rows[i][1]) for i in members])
    dist = np.linalg.norm(x - x.mean(0), axis=1)
    return dist[members.index(index)] <= np.median(dist)


def test_cold_start_puts_typical_items_of_unlabelled_regions_first(tmp_path):
    rows = _blobs()
    store, group = _labelled_store(tmp_path, WEAK)
    with store:
        items, _ = store.queue(QueueFilter(), 14, 0, now=NOW)
        blobs = [group[i.frame_id] for i in items]
        # round(30 × (1 - 4/6)) = 10 typical picks: one typical member of each blob without a label,
        # before any of the labelled blobs (which the value × distance order alone would mix in).
        unlabelled = sorted(set(range(BLOBS)) - set(LABELLED_BLOBS))
        assert sorted(blobs[:10]) == unlabelled
        assert all(_central(rows, int(i.frame_id.rsplit(".", 1)[1])) for i in items[:10])
        for it in items[:10]:
            assert it.reason.startswith("queue: typical: centre of a dense region of")
            assert "(cold start: 4 of 6 labels (2 per class × 3 classes))" in it.reason
        # Then the hand-over: value × distance, counting the typical items as ahead.
        assert sorted(blobs[10:]) == list(LABELLED_BLOBS)
        assert all("diverse: distance" in i.reason and "of 1" in i.reason and "cold start" not in i.reason
                   for i in items[10:])
        # Paging walks the same order.
        assert [i.id for i in items] == [i.id for i in store.queue(QueueFilter(), 7, 0, now=NOW)[0]
                                         + store.queue(QueueFilter(), 7, 7, now=NOW)[0]]


def _ids(store: Store, n: int = 30) -> list[int]:
    return [i.id for i in store.queue(QueueFilter(), n, 0, now=NOW)[0]]


def test_past_the_threshold_the_order_is_value_times_distance(tmp_path, another_store_url):
    strong, _ = _labelled_store(tmp_path, WEAK, n_labels=6, name="strong")  # 6 labels: 2 per class reached
    off, _ = _labelled_store(tmp_path, QueueConfig(cold_start=False), n_labels=6, name="off", url=another_store_url())
    with strong, off:
        items, _ = strong.queue(QueueFilter(), 30, 0, now=NOW)
        assert not any("cold start" in i.reason or "typical" in i.reason for i in items)
        assert items[0].reason.startswith("queue: uncertain (margin 0.9")
        assert _ids(strong) == _ids(off)


def _finish_round(store: Store, detail: dict) -> None:
    store.write(lambda db: db.execute("INSERT INTO rounds (started, finished, state, detail) VALUES (?, ?, 'done', ?)",
                                      [NOW - 60, NOW - 1, json.dumps(detail)]))


def test_a_known_validation_accuracy_ends_the_cold_start_at_once(tmp_path, another_store_url):
    store, _ = _labelled_store(tmp_path, WEAK)
    off, _ = _labelled_store(tmp_path, QueueConfig(cold_start=False), name="off", url=another_store_url())
    with store, off:
        _finish_round(store, {"version": 1, "val_accuracy": 0.5})  # weak: still cold start, and said so
        first = store.queue(QueueFilter(), 1, 0, now=NOW)[0][0]
        assert "validation accuracy 0.50 < 0.80" in first.reason and "typical" in first.reason
        _finish_round(store, {"version": 2, "val_accuracy": 0.85})  # the newest round is strong enough
        assert _ids(store) == _ids(off)
        _finish_round(store, {"version": 3, "val_accuracy": "high"})  # unreadable: the label rule again
        assert "typical" in store.queue(QueueFilter(), 1, 0, now=NOW)[0][0].reason


def test_cold_start_leaves_items_without_embeddings_in_expected_value_order(tmp_path):
    rows = _confusions()
    store, group = _store(tmp_path, rows, False, WEAK)
    with store:
        store.configure_project(labels=("circle", "square", "triangle"), batch_size=30)  # no labels: weakest
        items, _ = store.queue(QueueFilter(), 60, 0, now=NOW)
        assert [group[i.frame_id] for i in items[:12]] == [0] * 12
        assert not any("typical" in i.reason for i in items)


def test_cold_start_splits_its_picks_over_models_by_size():
    """Pure: two models' embeddings are never clustered together; each gets its share of the typical picks."""
    g = np.random.default_rng(3)
    centres = g.normal(size=(6, 16)) * 3.0
    cands = [ranking.Candidate(i, 0.5, quantize_embedding(centres[i % 6] + g.normal(size=16) * 0.3),
                               ("shapes", 3 if i < 60 else 4), 0.5, "margin") for i in range(90)]
    weakest = ranking.Strength(n_labelled=0, n_classes=3, batch=30)
    order = ranking.diverse_order(cands, weakest, QueueConfig())
    typical = [i for i, why in order if why.startswith("typical")]
    assert len(typical) == 30 and [i for i, _ in order[:30]] == typical
    assert sum(i < 60 for i in typical) == 20  # v3 has 60 of the 90 items: 20 of the 30 picks
    assert (order[0][0] < 60) != (order[1][0] < 60)  # interleaved: each model's best pick first
    assert ranking.diverse_order(cands, None) == ranking.diverse_order(cands, weakest, QueueConfig(cold_start=False))


def test_queue_config_is_strict():
    from trainer.server.config import ConfigError, ServerConfig, load_config

    assert ServerConfig().queue == QueueConfig()
    for bad in ("labels_per_class = 0", "weak_accuracy = 1.5", "typo = 1"):
        path = Path(tempfile.mkdtemp()) / "server.toml"
        path.write_text(f"[queue]\n{bad}\n")
        with pytest.raises(ConfigError, match=f"queue.{bad.split()[0]}"):
            load_config(path)


def test_the_server_hands_its_queue_config_to_the_store(tmp_path):
    from trainer.server.config import ServerConfig
    from trainer.server.service import Service

    cfg = ServerConfig.model_validate({"mqtt": {"enabled": False}, "store": {"data_dir": str(tmp_path / "data")},
                                       "queue": {"labels_per_class": 25, "weak_accuracy": 0.9}})
    svc = Service(cfg).start()
    try:
        assert svc.store.queue_config == QueueConfig(labels_per_class=25, weak_accuracy=0.9)
    finally:
        svc.stop()
