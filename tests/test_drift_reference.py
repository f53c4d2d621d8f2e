"""The reference histogram of a model on its test split, and the hook that never fails a round."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np

from agent.metrics import ConfidenceHistogram
from agent.model import ModelRunner
from trainer.drift.reference import reference_histogram, store_reference
from trainer.publish.registry import NewModel, Registry
from trainer.publish.simfleet import tiny_classifier


def images(folder, n: int) -> list:
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def test_reference_counts_each_image_as_the_agent_would(tmp_path):
    model = tiny_classifier(tmp_path / "m.onnx", "m", ("cat", "dog"), seed=3)
    paths = images(tmp_path / "test", 12)
    (tmp_path / "test" / "broken.png").write_bytes(b"not a png")
    hist, read = reference_histogram(model, paths + [tmp_path / "test" / "broken.png"])
    assert read == 12 and sum(sum(v) for v in hist.values()) == 12
    # the agent's own histogram of the same frames through the same runtime
    runner, agent_hist = ModelRunner.load(model, ["cpu"]), ConfidenceHistogram()
    for p in paths:
        for label, conf in runner.infer(cv2.imread(str(p))).top():
            agent_hist.add(label, conf)
    assert {k: tuple(v) for k, v in hist.items()} == agent_hist.snapshot()


def test_store_reference_never_raises(tmp_path):
    model = tiny_classifier(tmp_path / "m.onnx", "m", ("cat", "dog"), seed=3)
    with Registry(tmp_path / "data") as registry:
        v = registry.register(NewModel(name="m", file=model, task="classification", labels=("cat", "dog"))).version
        examples = [SimpleNamespace(image_path=p) for p in images(tmp_path / "test", 4)]
        assert not store_reference(registry, "m", v, model, [])  # no test split: nothing stored
        assert not store_reference(registry, "m", v, tmp_path / "gone.onnx", examples)  # logged, not raised
        assert not store_reference(registry, "m", v + 1, model, examples)  # no such model
        assert registry.reference("m", v) is None
        assert store_reference(registry, "m", v, model, examples)
        assert registry.reference("m", v)["examples"] == 4
