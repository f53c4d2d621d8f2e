"""`edgeloop store migrate`: a SQLite store (and its registry) copied to the other backend, verified, refused
into a non-empty target, and the copy behaves like the original (queue order, items, lineage, new ids)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import factories
from trainer.publish.registry import NewModel, Registry
from trainer.store import Store, incoming
from trainer.store.move import MoveError, copy_store


def _source(tmp_path: Path) -> str:
    """A SQLite store with edge samples, labels, splits, a pre-label, fleet state, a model and its lineage."""
    data = tmp_path / "old"
    url = f"sqlite:///{data / 'edgeloop.db'}"
    with Store(data, url=url) as store:
        store.configure_project(task="classification", labels=factories.sample().labels)
        store.ingest_samples([incoming(factories.sample(frame_id=f"cam.gate.{i}", jpeg=factories.jpeg(seed=i),
                                                        uncertainty=0.1 + i / 40, embedding=b""))
                              for i in range(30)])
        store.label(3, "ana", "label", "circle")
        store.label(4, "ana", "reject")
        store.set_splits({3: "test"})
        store.record_fleet([factories.status()], [factories.telemetry()])
        store.write(lambda db: db.execute(
            "INSERT INTO prelabels (example_id, teacher, model_name, model_version, state, label, score, created_at)"
            " VALUES (5, 't1', 'yolox', 1, 'done', 'square', 0.9, 1.5)"))
    with Registry(data, url=url) as registry:
        model = tmp_path / "m.onnx"
        model.write_bytes(b"not parsed by the registry")
        registry.register(NewModel(name="shapes", file=model, dataset_version="d1",
                                   task="classification", labels=("circle", "square"),
                                   examples={"3": "test"}))
    return url


def test_migrate_copies_everything_and_verifies(tmp_path: Path, store_url: str | None) -> None:
    source = _source(tmp_path)
    target = store_url or f"sqlite:///{tmp_path / 'new' / 'edgeloop.db'}"
    reports = copy_store(source, target)
    rows = {t.table: t.rows for r in reports for t in r.tables}
    assert rows["examples"] == rows["samples"] == rows["blobs"] == 30 and rows["label_events"] == 2
    assert rows["models"] == 1 and rows["model_examples"] == 1 and rows["prelabels"] == 1
    assert reports[0].blobs_verified == 30
    with Store(tmp_path / "a", url=source) as old, Store(tmp_path / "b", url=target) as new:
        assert [i.id for i in new.queue()[0]] == [i.id for i in old.queue()[0]]
        assert new.item(3) == old.item(3) and new.item(5).prelabel == old.item(5).prelabel
        assert new.image(7) == old.image(7) and new.fleet(now=0) == old.fleet(now=0)
        assert new.stats()["counts"] == old.stats()["counts"] and new.label_history(4) == old.label_history(4)
        new.ingest_samples([incoming(factories.sample(frame_id="cam.gate.new"))])
        assert new.count() == 31 and new.item(31).frame_id == "cam.gate.new"  # ids continue after the copied ones
    with Registry(tmp_path / "b", url=target) as registry:
        assert registry.examples_of("shapes", 1) == {"3": "test"} and registry.get("shapes", 1).sha256


def test_migrate_refuses_a_nonempty_target_unless_forced(tmp_path: Path, store_url: str | None) -> None:
    source = _source(tmp_path)
    target = store_url or f"sqlite:///{tmp_path / 'new' / 'edgeloop.db'}"
    with Store(tmp_path / "b", url=target) as other:
        other.ingest_samples([incoming(factories.sample(frame_id="x.y.1"))])
    with pytest.raises(MoveError, match="not empty"):
        copy_store(source, target)
    with pytest.raises(MoveError, match="same database"):
        copy_store(source, source)
    cli = [sys.executable, "-m", "edgeloop", "store", "migrate", "--from", source, "--to", target]
    refused = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "not empty" in refused.stderr
    forced = subprocess.run(cli + ["--force"], capture_output=True, text=True, timeout=120)
    assert forced.returncode == 0, forced.stderr
    assert "verified" in forced.stdout
    with Store(tmp_path / "b", url=target) as new:
        assert new.count() == 30 and "x.y.1" not in new.frame_ids()
