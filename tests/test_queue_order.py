"""The review queue's order over a real store: diverse first page with embeddings, expected value without."""

from __future__ import annotations

import time

import numpy as np
import pytest

from protocol.codec import decode, encode, topic_for
from protocol.embedding import quantize_embedding
from tests.factories import sample
from trainer.store import ranking
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


def _store(tmp_path, rows, with_embeddings: bool) -> tuple[Store, dict[str, int]]:
    store = Store(tmp_path / "data")
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
    store, group = _store(tmp_path, rows, True)
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
