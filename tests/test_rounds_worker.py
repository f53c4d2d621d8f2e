"""Training rounds in a spawned worker on a real store: trigger, progress, cancel, register, gate, rollout."""

from __future__ import annotations

import json
import time
from collections import Counter

import factories
import numpy as np
import pytest

from protocol.manifest import Cohort
from trainer.publish import keys
from trainer.publish.gate import GateConfig
from trainer.publish.health import RolloutPolicy
from trainer.publish.registry import NewModel, Registry
from trainer.publish.service import PublishingConfig, PublishingService
from trainer.publish.simfleet import tiny_classifier
from trainer.rounds.pipeline import RoundManager, RoundsConfig, val_accuracy
from trainer.rounds.worker import Busy, RoundOutcome
from trainer.store import Store, incoming, new_example
from trainer.synthetic.shapes import CLASSES, ShapesGenerator

TRAIN = {"model": "small_cnn", "input_size": 32, "epochs": 2, "min_steps": 0, "batch_size": 16, "patience": 5,
         "augment": {"enabled": False}, "export": {"verify_images": 2}, "device": "cpu"}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data")
    examples = ShapesGenerator(size=32).generate(48, np.random.default_rng(1), tmp_path / "gen")
    assert min(Counter(e.label for e in examples).values()) >= 10
    news = [new_example(e.image_path.read_bytes(), label=e.label, source="synthetic", origin=e.id)
            for e in examples]
    s.add_examples(news, task="classification", labels=CLASSES)
    s.configure_project(batch_size=30)
    yield s
    s.close()


def edge_samples(store: Store, n: int, start: int = 0) -> list[int]:
    batch = []
    for i in range(start, start + n):
        jpeg = factories.jpeg(32, 32, seed=i)
        batch.append(incoming(factories.sample(frame_id=f"cam-agent-1.gate.{i:06d}", jpeg=jpeg, width=32,
                                               height=32)))
    store.ingest_samples(batch)
    items, _total = store.queue(limit=200)
    return [it.id for it in items]


def label_all(store: Store, ids: list[int]) -> None:
    for i, item_id in enumerate(ids):
        store.label(item_id, "oracle", "label", label=CLASSES[i % 3])


@pytest.mark.slow
def test_batch_triggers_a_round_that_is_registered_gated_and_rolled_out(store, tmp_path, broker):
    files = keys.generate(tmp_path / "keys")
    registry = Registry(tmp_path / "data")
    svc = PublishingService.open(PublishingConfig(
        model_name="shapes", signing_key=files.private, base_url="http://127.0.0.1:9", mqtt_host=broker.host,
        mqtt_port=broker.port, rollout=RolloutPolicy(discovery_s=0.2, window_s=0.2, tick_s=0.05)),
        registry=registry)
    rounds = RoundManager(store, registry, RoundsConfig(model_name="shapes", work_dir=tmp_path / "rounds",
                                                        train=TRAIN), rollout=svc.controller)
    try:
        label_all(store, edge_samples(store, 29))
        assert not rounds.check_trigger().start
        label_all(store, edge_samples(store, 1, start=29))
        assert store.corrected_since_last_round() == 30
        assert rounds.check_trigger().start
        with pytest.raises(Busy):
            rounds.start_round()
        label_all(store, edge_samples(store, 3, start=100))  # during the round: they count for the next
        assert rounds.wait(240), rounds.progress()
        progress = rounds.progress()
        assert progress["state"] == "done", progress
        assert [e["epoch"] for e in progress["epochs"]] == [0, 1]
        assert all(e["loss"] > 0 for e in progress["epochs"])
        # the validation split's accuracy every epoch, next to the losses, for the live chart
        assert all(e["metric_name"] == "accuracy" and 0 <= e["val_metric"] <= 1 for e in progress["epochs"])
        assert progress["last"]["version"] == 1 and progress["last"]["gate"]["publish"]
        # the kept epoch's validation accuracy is in the store, where the review queue's cold start reads it
        detail = json.loads(store.db.read().execute("SELECT detail FROM rounds WHERE state = 'done'").fetchone()[0])
        fit = registry.get("shapes", 1).config["fit"]
        assert fit["metric_name"] == "accuracy" and detail["val_accuracy"] == fit["best_val_metric"] is not None
        assert store.corrected_since_last_round() == 3
        assert set(progress["last"]["timings"]) == {"process", "train", "register", "gate"}
        rounds.rollouts[0].result(60)
        model = registry.get("shapes", 1)
        assert model.state == "fleet" and model.task == "classification"
        assert "accuracy" in model.metrics and set(model.per_class) == set(CLASSES)
        lineage = registry.examples_of("shapes", 1)
        assert len(lineage) == 48 + 30  # the snapshot taken at the start, not the 3 labelled during the round
        stored = {e.id: e.split for e in store.examples()}
        assert all(stored[k] == split for k, split in lineage.items())  # the splits were persisted
        assert [p["stage"] for p in registry.publications("shapes", 1)] == ["fleet"]  # no agents: no canary
    finally:
        rounds.close()
        svc.close()
        registry.close()


@pytest.mark.slow
def test_killed_worker_is_reported_failed_and_cancel_stops_the_next_round(store, tmp_path):
    registry = Registry(tmp_path / "data")
    rounds = RoundManager(store, registry, RoundsConfig(model_name="shapes", work_dir=tmp_path / "rounds",
                                                        train={**TRAIN, "epochs": 500, "patience": 500}))
    try:
        first = rounds.start_round("test")
        rounds.worker._proc.kill()  # what the OOM killer or a kill -9 would do
        assert rounds.wait(60)
        p = rounds.progress()
        assert p["state"] == "failed" and "exited with code -9" in p["error"], p
        second = rounds.start_round("again")  # a dead worker does not block the next round
        assert second == first + 1
        assert rounds.cancel()  # honoured at the next training batch, whenever the child gets there
        assert rounds.wait(120)
        p = rounds.progress()
        assert p["state"] == "cancelled" and p["last"]["state"] == "cancelled", p
        assert registry.models() == []
        rows = store.db.read().execute("SELECT id, state, finished IS NOT NULL FROM rounds ORDER BY id").fetchall()
        assert rows == [(first, "failed", 1), (second, "cancelled", 1)]
        assert not rounds.cancel()
    finally:
        rounds.close()
        registry.close()


def test_a_worse_candidate_is_kept_rejected_not_published(store, tmp_path):
    registry = Registry(tmp_path / "data")
    fleet_file = tiny_classifier(tmp_path / "fleet.onnx", "shapes", CLASSES)
    registry.register(NewModel(name="shapes", file=fleet_file, task="classification", labels=CLASSES,
                               metrics={"accuracy": 0.9}, per_class={c: {"recall": 0.9, "support": 5}
                                                                     for c in CLASSES}))
    registry.set_state("shapes", 1, "fleet")
    rounds = RoundManager(store, registry, RoundsConfig(model_name="shapes", work_dir=tmp_path / "rounds",
                                                        gate=GateConfig(max_class_drop=0.1)))
    onnx = tiny_classifier(tmp_path / "round" / "model.onnx", "shapes", CLASSES, seed=3)
    ckpt = onnx.with_name("model.pt")
    ckpt.write_bytes(b"weights")
    ids = [e.id for e in store.examples()]
    result = {"onnx": str(onnx), "checkpoint": str(ckpt), "task": "classification", "labels": list(CLASSES),
              "splits": {i: "train" for i in ids}, "dataset_version": "d", "overfit": False, "fit": {},
              "split_counts": {}, "imbalance": {}, "seconds": 1.0, "report": {},
              "metrics": {"accuracy": 0.8, "per_class": {c: {"recall": 0.8, "support": 5} for c in CLASSES}}}
    round_id = store.write(lambda db: db.execute("INSERT INTO rounds (started, state) VALUES (?, 'running')",
                                                 [time.time()]).lastrowid)
    orphan = RoundManager(store, registry, RoundsConfig(model_name="shapes", work_dir=tmp_path / "rounds"))
    orphan.close()  # a new manager marks rounds a dead server left "running" as failed
    assert store.db.read().execute("SELECT state FROM rounds WHERE id = ?", [round_id]).fetchone()[0] == "failed"
    rounds._finished(RoundOutcome(round_id, "done", result, "", time.time(), time.time()))
    m = registry.get("shapes", 2)
    assert m.state == "rejected" and "accuracy 0.8000 vs fleet 0.9000" in m.reason
    assert m.parent_version == 1 and m.gate["publish"] is False
    assert rounds.last.version == 2 and not rounds.last.rollout_started
    assert registry.current("shapes").version == 1
    assert registry.models_using(ids[0]) == [("shapes", 2, "train")]
    assert {e.split for e in store.examples()} == {"train"}
    rounds.close()
    registry.close()


def test_a_person_can_still_publish_a_rejected_candidate(store, tmp_path, broker):
    files = keys.generate(tmp_path / "keys")
    registry = Registry(tmp_path / "data")
    f = tiny_classifier(tmp_path / "c.onnx", "shapes", CLASSES)
    registry.register(NewModel(name="shapes", file=f, task="classification", labels=CLASSES))
    registry.set_state("shapes", 1, "rejected", "worse")
    svc = PublishingService.open(PublishingConfig(model_name="shapes", signing_key=files.private,
                                                  base_url="http://127.0.0.1:9", mqtt_host=broker.host,
                                                  mqtt_port=broker.port), registry=registry)
    try:
        svc.controller.publish("shapes", 1, Cohort("fleet"))
        assert registry.current("shapes").version == 1
    finally:
        svc.close()
        registry.close()


def test_val_accuracy_is_the_kept_epochs_classification_accuracy():
    """What a finished round records for the review queue's cold start (trainer/store/review.py)."""
    assert val_accuracy({"metric_name": "accuracy", "best_val_metric": 0.75}) == 0.75
    assert val_accuracy({"metric_name": "map_50", "best_val_metric": 0.75}) is None  # detection: not an accuracy
    assert val_accuracy({"metric_name": "accuracy", "best_val_metric": None}) is None  # no validation split
    assert val_accuracy({}) is None and val_accuracy(None) is None
