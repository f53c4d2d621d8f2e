"""Replay's batch-aware strategies (trainer.selection): names, picking, embeddings, end to end."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeloop.cli import main
from trainer.replay import datasets
from trainer.replay.embed import Embedder
from trainer.replay.loop import ReplaySettings, hold_out
from trainer.replay.pool import FramePool, embed
from trainer.replay.strategies import StrategyError, parse_list, resolve
from trainer.train.config import TrainConfig
from trainer.train.round import run_round
from tests.test_replay_units import cls_pred


def test_batch_strategy_names_and_aliases():
    names = [s.name for s in parse_list("diverse,badge,typical,typiclust,cold_start,coldstart,random", "classification")]
    assert names == ["diverse", "typical", "cold_start", "random"]
    assert resolve("cold_start", "classification").base == "margin"
    assert resolve("diverse", "detection").base == "threshold_band"
    assert resolve("diverse", "classification").batch_aware and not resolve("margin", "classification").batch_aware
    with pytest.raises(StrategyError) as e:
        resolve("kcenter", "classification")
    assert "diverse" in str(e.value) and "cold_start" in str(e.value) and "margin" in str(e.value)


def test_pick_batch_spreads_over_embeddings_where_margin_takes_one_confusion():
    # Ten frames confuse a/b (smallest margins, near-identical features); ten more each sit somewhere else.
    g = np.random.default_rng(0)
    preds = [cls_pred(0.5, 0.49, 0.01)] * 10 + [cls_pred(0.6, 0.3, 0.1)] * 10
    emb = np.concatenate([np.ones((10, 8)) + g.normal(size=(10, 8)) * 0.01, g.normal(size=(10, 8)) * 3])
    margin = resolve("margin", "classification").pick(preds, 5, random.Random(0))
    diverse = resolve("diverse", "classification").pick_batch(preds, emb, np.zeros((0, 8)), 5, random.Random(0))
    assert all(i < 10 for i in margin)
    assert sum(i < 10 for i in diverse) <= 2 and len(set(diverse)) == 5
    again = resolve("diverse", "classification").pick_batch(preds, emb, np.zeros((0, 8)), 5, random.Random(0))
    assert again == diverse


@pytest.mark.slow
def test_embedder_gives_penultimate_features_of_the_pool(tmp_path: Path):
    examples = datasets.load_examples("synthetic:shapes", "auto", tmp_path / "cache", synthetic_count=120)
    split = hold_out(examples, "classification", ReplaySettings(test_fraction=0.35))
    labelled = [replace(e, split="train") for e in split.pool[:20]]
    cfg = TrainConfig(epochs=1, input_size=32, device="cpu", export={"verify_images": 2})
    result = run_round(labelled + split.test, cfg, tmp_path / "round",
                       existing_splits={e.id: e.split for e in labelled + split.test})
    pool = FramePool(split.pool, parse_list("margin", "classification"))
    runner = pool.runner(result.onnx)
    embedder = Embedder(result.checkpoint)
    feats = embed(pool, runner, list(range(len(split.pool))), embedder, chunk=7)
    assert feats.shape == (len(split.pool), 128)  # small_cnn's pooled features, the head's input
    assert np.isfinite(feats).all() and feats.std(0).max() > 0
    np.testing.assert_allclose(embed(pool, runner, [3, 1], embedder), feats[[3, 1]], atol=1e-5)


@pytest.mark.slow
def test_replay_runs_the_batch_strategies_by_name(tmp_path: Path):
    rc = main(["--log-level", "WARNING", "replay", "--dataset", "synthetic:shapes", "--synthetic-count", "120",
               "--test-fraction", "0.35", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
               "--epochs", "1", "--input-size", "32", "--threads", "1", "--strategy", "cold_start,badge,typiclust",
               "--seeds", "1", "--rounds", "1", "--batch", "8"])
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "replay.json").read_text())
    assert doc["metric_name"] == "accuracy" and set(doc["curves"]) == {"cold_start", "diverse", "typical"}
    for (curve,) in doc["curves"].values():
        assert [p["labels"] for p in curve] == [6, 14]
    assert doc["timing"]["embed_seconds"] > 0


@pytest.mark.slow
def test_detection_replay_with_a_diverse_batch(tmp_path: Path):
    rc = main(["--log-level", "WARNING", "replay", "--dataset", "synthetic:shapes", "--synthetic-task", "detection",
               "--synthetic-count", "90", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
               "--strategy", "diverse", "--seeds", "1", "--rounds", "1", "--batch", "8", "--epochs", "1",
               "--input-size", "64", "--threads", "1"])
    assert rc == 0
    (curve,) = json.loads((tmp_path / "out" / "replay.json").read_text())["curves"]["diverse"]
    assert curve[1]["labels"] == curve[0]["labels"] + 8


def _curve(*points: tuple[int, float]) -> list[dict]:
    return [{"labels": n, "metric": m} for n, m in points]


def test_comparison_labels_to_reach_paired_by_seed_and_drops():
    from trainer.replay import report

    rand = [_curve((10, 0.5), (20, 0.6), (30, 0.7)), _curve((10, 0.5), (20, 0.6), (30, 0.8))]
    good = [_curve((10, 0.5), (20, 0.9), (30, 0.85)), _curve((10, 0.5), (20, 0.7), (30, 0.9))]
    margin = [_curve((10, 0.5), (20, 0.9), (30, 0.95)), _curve((10, 0.5), (20, 0.9), (30, 0.95))]
    assert report.labels_to_reach(rand[0], 0.65) == pytest.approx(25.0)
    assert report.labels_to_reach(rand[0], 0.99) is None
    comp = report.compare({"good": good, "margin": margin, "random": rand}, "random", "margin", (0.6,))
    assert comp["baseline_final"] == pytest.approx(0.75)
    row = comp["strategies"]["good"]
    assert row["reach_baseline_final"] == pytest.approx(10 + 10 * 0.25 / 0.3)  # mean curve 0.5 -> 0.8
    assert row["label_ratio"] == pytest.approx(row["reach_baseline_final"] / 30, abs=1e-4)  # random needs all 30
    assert row["paired_reach_baseline_final"] == [pytest.approx(10 + 10 * 0.2 / 0.4), pytest.approx(20 + 10 * 0.1 / 0.2)]
    assert row["paired_area_vs_baseline"]["wins"] == 2
    assert row["drop"] == {"any_seed": pytest.approx(0.05), "mean_curve": 0.0}
    assert row["below_reference_by_more_than_std"] == [20, 30]  # margin's std is 0 there
    assert comp["strategies"]["random"]["label_ratio"] == 1.0
    table = report.markdown({"curves": {"good": good, "random": rand}, "comparison": comp})
    assert table.splitlines()[0].startswith("| strategy | 10 | 20 | 30 | area")
    assert "| good | 0.500 ± 0.000 | 0.800 ± 0.100 |" in table
