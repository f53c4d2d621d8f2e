"""The model registry on a real SQLite file: versions, states, files, lineage, rollbacks."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from trainer.publish.registry import ModelNotFound, NewModel, Registry, RegistryError
from trainer.publish.simfleet import tiny_classifier


@pytest.fixture
def registry(tmp_path):
    r = Registry(tmp_path / "data")
    yield r
    r.close()


def new_model(tmp_path: Path, seed: int = 0, **kw) -> NewModel:
    f = tiny_classifier(tmp_path / f"round-{seed}" / "model.onnx", "m", ("a", "b"), seed=seed)
    ckpt = f.with_name("model.pt")
    ckpt.write_bytes(b"checkpoint %d" % seed)
    base = dict(name="m", file=f, task="classification", labels=("a", "b"), dataset_version="ds1",
                config={"epochs": 3}, metrics={"accuracy": 0.8}, per_class={"a": {"recall": 0.8, "support": 5}},
                checkpoint=ckpt, examples={"1": "train", "2": "val", "3": "test"})
    return NewModel(**{**base, **kw})


def test_register_copies_the_file_and_hashes_it(registry, tmp_path):
    new = new_model(tmp_path)
    m = registry.register(new)
    assert (m.name, m.version, m.state) == ("m", 1, "candidate")
    assert Path(m.file_path).parent == registry.models_dir / "m"
    assert m.sha256 == hashlib.sha256(new.file.read_bytes()).hexdigest()
    assert m.size == new.file.stat().st_size
    assert Path(m.checkpoint_path).read_bytes() == b"checkpoint 0"
    original = new.file.read_bytes()
    new.file.unlink()  # the round's folder may be cleaned: the registry keeps its own copy
    assert Path(m.file_path).read_bytes() == original
    assert registry.get("m", 1).metrics == {"accuracy": 0.8}
    assert registry.get("m", 1).config == {"epochs": 3}


def test_versions_are_monotonic_per_name_and_above_the_parent(registry, tmp_path):
    assert registry.register(new_model(tmp_path, 0)).version == 1
    assert registry.register(new_model(tmp_path, 1)).version == 2
    assert registry.register(new_model(tmp_path, 2, parent_version=10)).version == 11
    assert registry.register(new_model(tmp_path, 3, name="other")).version == 1
    assert [m.version for m in registry.models("m")] == [11, 2, 1]
    assert registry.names() == ["m", "other"]


def test_states_current_and_events(registry, tmp_path):
    registry.register(new_model(tmp_path, 0))
    registry.register(new_model(tmp_path, 1))
    assert registry.current("m") is None
    registry.set_state("m", 1, "fleet")
    registry.set_state("m", 2, "rejected", "worse", gate={"publish": False})
    assert registry.current("m").version == 1
    assert registry.get("m", 2).reason == "worse" and registry.get("m", 2).gate == {"publish": False}
    assert [e["kind"] for e in registry.events("m", 2)] == ["registered", "state"]
    with pytest.raises(RegistryError):
        registry.set_state("m", 1, "shipped")
    with pytest.raises(ModelNotFound):
        registry.set_state("m", 9, "fleet")


def test_lineage_both_ways(registry, tmp_path):
    registry.register(new_model(tmp_path, 0, examples={"1": "train", "2": "test"}))
    registry.register(new_model(tmp_path, 1, examples={"1": "train", "3": "val"}))
    assert registry.examples_of("m", 1) == {"1": "train", "2": "test"}
    assert registry.models_using(1) == [("m", 1, "train"), ("m", 2, "train")]
    assert registry.models_using("3") == [("m", 2, "val")]
    assert registry.models_using("404") == []
    with pytest.raises(ModelNotFound):
        registry.examples_of("m", 7)


def test_rollback_row_is_a_new_higher_version_with_the_old_file(registry, tmp_path):
    one = registry.register(new_model(tmp_path, 0))
    registry.register(new_model(tmp_path, 1))
    registry.set_state("m", 1, "fleet")
    back = registry.register_rollback("m", 1)
    assert back.version == 3 and back.note == "rollback to 1" and back.source_version == 1
    assert (back.sha256, back.file_path, back.metrics) == (one.sha256, one.file_path, one.metrics)
    assert registry.current("m").version == 3
    assert registry.examples_of("m", 3) == registry.examples_of("m", 1)


def test_only_announced_models_are_servable(registry, tmp_path):
    registry.register(new_model(tmp_path))
    assert registry.servable("m", 1) is None
    registry.record_publication("m", 1, "fleet", {"stage": "fleet"}, b"{}", b"s" * 64, "http://x/models/m/1.onnx")
    assert registry.servable("m", 1).version == 1
    assert registry.publications("m")[0]["signature"] == b"s" * 64


def test_bad_input_is_refused_and_leaves_nothing(registry, tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        registry.register(new_model(tmp_path, file=tmp_path / "nope.onnx"))
    with pytest.raises(RegistryError, match="splits"):
        registry.register(new_model(tmp_path, examples={"1": "holdout"}))
    assert registry.models() == []
    assert [p.name for p in (registry.models_dir / "m").glob("*")] == []


@pytest.mark.sqlite_only
def test_reopen_keeps_data_and_applies_migrations_once(tmp_path):
    r = Registry(tmp_path / "data")
    r.register(new_model(tmp_path))
    r.close()
    r = Registry(tmp_path / "data")
    try:
        assert r.get("m", 1).version == 1
    finally:
        r.close()
    conn = sqlite3.connect(tmp_path / "data" / "registry.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [row[0] for row in conn.execute("SELECT name FROM _migrations")] == ["0001_initial",
                                                                              "0002_rollouts_and_references"]
