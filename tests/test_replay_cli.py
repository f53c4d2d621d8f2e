"""``edgeloop replay`` end to end on a small generated dataset: real rounds, real ONNX, real runner."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.model import ModelRunner
from edgeloop.cli import main
from trainer.replay import datasets
from trainer.replay.loop import ReplaySettings, hold_out
from trainer.replay.pool import FramePool
from trainer.replay.strategies import parse_list
from trainer.train.config import TrainConfig
from trainer.train.round import run_round

pytestmark = pytest.mark.slow


@pytest.fixture
def one_thread():
    """2 shared cores: one torch thread is faster than two fighting over them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _replay(tmp_path: Path, *extra: str) -> int:
    return main(["--log-level", "WARNING", "replay", "--dataset", "synthetic:shapes", "--synthetic-count", "120", "--test-fraction", "0.35",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--epochs", "2",
                 "--input-size", "32", "--threads", "1", *extra])


def test_replay_writes_the_curves_json_and_png(tmp_path: Path, capsys):
    rc = _replay(tmp_path, "--strategy", "least,random", "--seeds", "2", "--rounds", "2", "--batch", "10")
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "replay.json").read_text())
    assert doc["metric_name"] == "accuracy"
    assert set(doc["curves"]) == {"least_confidence", "random"}
    for runs in doc["curves"].values():
        assert len(runs) == 2  # one list per seed
        for curve in runs:
            assert [p["labels"] for p in curve] == [6, 16, 26]  # 2 per class, then two batches of 10
            assert all(set(p) == {"labels", "metric"} and 0.0 <= p["metric"] <= 1.0 for p in curve)
    # A seed's seed set and first model are the same whatever the strategy.
    assert doc["curves"]["least_confidence"][0][0] == doc["curves"]["random"][0][0]
    assert doc["sizes"]["test"] + doc["sizes"]["pool"] == 120
    assert doc["timing"]["rounds"] == 12 and doc["timing"]["scored_frames"] > 0
    png = (tmp_path / "out" / "replay.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[0] > 200 and img.shape[1] > 300
    out = capsys.readouterr().out
    assert "least_confidence: area" in out and "random: area" in out
    assert not list((tmp_path / "out").glob("edgeloop-replay-*"))  # round models are cleaned up


def test_replay_is_deterministic_per_seed(tmp_path: Path):
    args = ("--strategy", "margin", "--seeds", "1", "--rounds", "1", "--batch", "10")
    assert _replay(tmp_path / "a", *args) == 0
    assert _replay(tmp_path / "b", *args) == 0
    a = json.loads((tmp_path / "a" / "out" / "replay.json").read_text())["curves"]
    b = json.loads((tmp_path / "b" / "out" / "replay.json").read_text())["curves"]
    assert a == b


def test_unknown_strategy_is_a_clear_error_naming_the_agents_strategies(tmp_path: Path, capsys):
    assert _replay(tmp_path, "--strategy", "margin,confusion") == 2
    err = capsys.readouterr().err
    assert "unknown strategy 'confusion'" in err
    assert "least_confidence" in err and "threshold_band" in err
    assert _replay(tmp_path, "--strategy", "band") == 2
    assert "does not apply to classification" in capsys.readouterr().err


def test_bad_dataset_and_budget_errors(tmp_path: Path, capsys):
    rc = main(["replay", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    rc = main(["replay", "--dataset", str(tmp_path / "empty"), "--format", "imagefolder", "--out", str(tmp_path / "o")])
    assert rc == 2 and "no class folders" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --rounds and --budget are two ways to say when to stop
        main(["replay", "--dataset", "digits", "--rounds", "2", "--budget", "100", "--out", str(tmp_path / "o")])


def test_batched_pool_scoring_matches_the_agent_runner_frame_by_frame(tmp_path: Path, one_thread):
    """The pool is scored in batches; every prediction must equal the agent's one-frame infer()."""
    examples = datasets.load_examples("synthetic:shapes", "auto", tmp_path / "cache", synthetic_count=120)
    split = hold_out(examples, "classification", ReplaySettings(test_fraction=0.35))
    labelled = [replace(e, split="train") for e in split.pool[:30]]
    cfg = TrainConfig(epochs=1, input_size=32, device="cpu", export={"verify_images": 2})
    result = run_round(labelled + split.test, cfg, tmp_path / "round",
                       existing_splits={e.id: e.split for e in labelled + split.test})
    pool = FramePool(split.pool, parse_list("margin", "classification"), score_batch=7)
    runner = pool.runner(result.onnx)
    indices = list(range(len(split.pool)))
    random.Random(0).shuffle(indices)
    batched = pool.predict(runner, indices)
    single = ModelRunner.load(result.onnx, ["cpu"])
    for i, pred in zip(indices, batched):
        ref = single.infer(cv2.imread(str(split.pool[i].image_path)))
        np.testing.assert_allclose(pred.scores, ref.scores, atol=1e-5)
        assert pred.labels == ref.labels


def test_detection_replay_scores_boxes_with_the_agents_band_strategy(tmp_path: Path):
    rc = main(["--log-level", "WARNING", "replay", "--dataset", "synthetic:shapes", "--synthetic-task", "detection",
               "--synthetic-count", "60", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
               "--strategy", "band", "--seeds", "1", "--rounds", "1", "--batch", "8", "--epochs", "1",
               "--input-size", "64", "--threads", "1"])
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "replay.json").read_text())
    assert doc["metric_name"] == "map_50" and doc["task"] == "detection"
    (curve,) = doc["curves"]["threshold_band"]
    assert curve[1]["labels"] == curve[0]["labels"] + 8
    assert all(0.0 <= p["metric"] <= 1.0 for p in curve)
