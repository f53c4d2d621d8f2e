"""The detection gate scores real ONNX detectors on all their boxes, down to a low floor, not the card threshold.

The detector (tests/agent_helpers.make_detector) scores each grid cell by its
brightness; its card threshold is 0.5. The test objects are dim grey cells on
black, so every correct box scores about 0.3: invisible at the card threshold,
a perfect ranking for AP.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.model import ModelRunner
from tests.agent_helpers import make_detector
from trainer.dataset import Example, LabeledBox
from trainer.publish.registry import NewModel, Registry
from trainer.rounds.evaluate import evaluate_model
from trainer.rounds.pipeline import RoundManager, RoundsConfig
from trainer.store import Store

GRID, SIZE, GREY = 4, 64, 110  # grey 110/255: sigmoid(12 * (0.43 - 0.5)) = 0.30 < the card's 0.5


def dim_objects(root: Path, n: int = 12) -> list[Example]:
    out = []
    for i in range(n):
        r, c = divmod(i % (GRID * GRID), GRID)
        image = np.zeros((SIZE, SIZE, 3), np.uint8)
        k = SIZE // GRID
        image[r * k:(r + 1) * k, c * k:(c + 1) * k] = GREY
        path = root / f"img{i}.png"
        cv2.imwrite(str(path), image)
        box = LabeledBox(c / GRID, r / GRID, (c + 1) / GRID, (r + 1) / GRID, "blob")
        out.append(Example(id=f"img{i}", image_path=path, boxes=(box,), split="test"))
    return out


def test_correct_boxes_below_the_card_threshold_still_score(tmp_path: Path):
    model = make_detector(tmp_path / "det.onnx", grid=GRID, size=32)
    test = dim_objects(tmp_path)
    at_threshold = ModelRunner.load(model, ["cpu"]).infer(cv2.imread(str(test[0].image_path)))
    assert at_threshold.threshold == 0.5 and at_threshold.box_scores.size == 0  # the agent sees nothing
    m = evaluate_model(model, test, ["blob"], "detection")
    assert m["map_50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    assert m["per_class"]["blob"]["support"] == len(test)


def test_same_split_gate_on_detectors(tmp_path: Path):
    good = make_detector(tmp_path / "good.onnx", grid=GRID, size=32)
    inverted = make_detector(tmp_path / "inverted.onnx", grid=GRID, size=32, gain=-12.0)  # dark cells score high
    test = dim_objects(tmp_path)
    store, registry = Store(tmp_path / "data"), Registry(tmp_path / "data")
    try:
        def register(path: Path):
            return registry.register(NewModel(name="blobs", file=path, task="detection", labels=("blob",),
                                              metrics={"map": 0.5, "map_50": 0.5}))
        fleet, twin, worse, better = register(good), register(good), register(inverted), register(good)
        rounds = RoundManager(store, registry, RoundsConfig(model_name="blobs", work_dir=tmp_path / "rounds",
                                                            auto_start=False))
        tie = rounds.judge(twin, fleet, test)  # the same model again: equal mAP, never a pass
        assert not tie.publish and tie.candidate == tie.current == pytest.approx(1.0), tie
        assert "equal" in tie.reasons[0]
        refused = rounds.judge(worse, fleet, test)
        assert not refused.publish and refused.candidate < refused.current
        assert any("class 'blob': ap_50 dropped" in r for r in refused.reasons), refused.reasons
        passed = rounds.judge(better, worse, test)
        assert passed.publish and passed.candidate > passed.current, passed
        rounds.close()
    finally:
        registry.close()
        store.close()
