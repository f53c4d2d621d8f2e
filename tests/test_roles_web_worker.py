"""A web server that only enqueues rounds and a worker that trains them, on one store (both backends):
start, live progress read from the store, wait, the last round's report, cancel of a queued round."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from trainer.publish.registry import Registry
from trainer.rounds.pipeline import RoundManager, RoundsConfig
from trainer.rounds.worker import Busy
from trainer.store import Store, new_example
from trainer.synthetic.shapes import CLASSES, ShapesGenerator

BACKENDS = pytest.mark.parametrize("store_backend", ["sqlite", "postgresql"], indirect=True)
TRAIN = {"model": "small_cnn", "input_size": 32, "epochs": 2, "min_steps": 0, "batch_size": 16, "patience": 5,
         "augment": {"enabled": False}, "export": {"verify_images": 2}, "device": "cpu"}


@pytest.fixture
def store(tmp_path, store_backend):
    s = Store(tmp_path / "data")
    examples = ShapesGenerator(size=32).generate(48, np.random.default_rng(1), tmp_path / "gen")
    assert min(Counter(e.label for e in examples).values()) >= 10
    s.add_examples([new_example(e.image_path.read_bytes(), label=e.label, source="synthetic", origin=e.id)
                    for e in examples], task="classification", labels=CLASSES)
    yield s
    s.close()


@BACKENDS
def test_the_web_server_enqueues_a_worker_trains_and_the_web_server_reports(store, tmp_path):
    registry = Registry(tmp_path / "data")
    cfg = RoundsConfig(model_name="shapes", work_dir=tmp_path / "rounds", train=TRAIN, auto_start=False)
    web = RoundManager(store, registry, cfg, runs_jobs=False, owner="web")
    worker = None
    try:
        queued = web.start_round("manual")
        assert web.progress()["state"] == "queued" and web.progress()["round_id"] == queued
        assert web.cancel() and web.progress()["state"] == "cancelled"  # queued: cancelled without a worker
        round_id = web.start_round("manual")
        with pytest.raises(Busy):
            web.start_round("again")
        worker = RoundManager(store, registry, cfg, owner="gpu-1", lease_s=10)
        worker.serve_jobs(0.2)
        assert web.wait(240), web.progress()
        p = web.progress()
        assert p["round_id"] == round_id and p["state"] == "done" and p["owner"] == "gpu-1", p
        assert [e["epoch"] for e in p["epochs"]] == [0, 1]
        assert web.last.round_id == round_id and web.last.state == "done" and web.last.version == 1
        assert p["last"]["version"] == 1 and p["last"]["state"] == "done"
        assert [m.version for m in registry.models("shapes")] == [1]
    finally:
        web.close()
        if worker is not None:
            worker.close()
        registry.close()
