"""Two writers on one store (two collectors' stores on PostgreSQL, two writer threads on one SQLite file):
overlapping frames ingested at the same time are stored exactly once, receipted to both, with no orphan rows."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import factories
from trainer.store import Store, incoming


def test_overlapping_concurrent_ingest_stores_each_frame_once(tmp_path: Path, store_url: str | None) -> None:
    frames = [factories.sample(frame_id=f"cam-agent-1.gate.{i:05d}", jpeg=factories.jpeg(seed=i % 7))
              for i in range(600)]
    shares = [frames[:400], frames[200:]]  # 200 frames reach both writers
    stores = [Store(tmp_path / "data", url=store_url) for _ in shares]
    receipted: list[set[str]] = [set(), set()]
    errors: list[BaseException] = []

    def collector(k: int) -> None:
        batch = list(shares[k])
        random.Random(k).shuffle(batch)
        try:
            for start in range(0, len(batch), 25):
                result = stores[k].ingest_samples([incoming(s) for s in batch[start:start + 25]])
                receipted[k].update(result.stored)
        except BaseException as e:  # reported below, with the assertion that fails
            errors.append(e)
    threads = [threading.Thread(target=collector, args=(k,)) for k in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert receipted[0] == {s.frame_id for s in shares[0]} and receipted[1] == {s.frame_id for s in shares[1]}
        store = stores[0]
        assert store.count() == 600 and sorted(store.frame_ids()) == sorted(s.frame_id for s in frames)
        orphans = store.db.read().execute("SELECT count(*) FROM examples e LEFT JOIN samples s"
                                          " ON s.example_id = e.id WHERE s.example_id IS NULL").fetchone()[0]
        assert orphans == 0
        counters = store.counters()
        assert counters["ingest_stored"] == 600
        assert counters["ingest_duplicates"] + counters.get("ingest_concurrent_duplicates", 0) >= 200
        assert len(store.queue(limit=600)[0]) == 600
    finally:
        for s in stores:
            s.close()


def test_processes_starting_at_once_share_one_project(tmp_path: Path, store_url: str | None) -> None:
    """Server, collectors and workers open the store together: migrations run once, every label is kept."""
    stores: list[Store] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start(k: int) -> None:
        try:
            s = Store(tmp_path / "data", url=store_url)
            with lock:
                stores.append(s)
            s.configure_project(task="classification", labels=(f"label-{k}",))
        except BaseException as e:  # reported by the assertion below
            errors.append(e)
    threads = [threading.Thread(target=start, args=(k,)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert sorted(stores[0].project().labels) == [f"label-{k}" for k in range(4)]
    finally:
        for s in stores:
            s.close()
