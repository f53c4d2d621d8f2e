"""Replay's pieces: strategy table, batch picking, seed sets, splits, curve summaries."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from agent.model import EMPTY_BOXES, Prediction
from agent.sampling import STRATEGIES
from trainer.dataset import Example, LabeledBox
from trainer.replay import report
from trainer.replay.loop import ReplaySettings, batch_sizes, hold_out, seed_set
from trainer.replay.strategies import StrategyError, parse_list, resolve


def cls_pred(*scores: float) -> Prediction:
    return Prediction("classification", tuple("abc"[:len(scores)]), np.array(scores, np.float32), EMPTY_BOXES,
                      np.zeros(0, np.float32), np.zeros(0, np.int64), 0.0)


def det_pred(*box_scores: float) -> Prediction:
    n = len(box_scores)
    return Prediction("detection", ("x",), np.zeros(0, np.float32), np.tile([[0.1, 0.1, 0.4, 0.4]], (n, 1)).astype(
        np.float32), np.array(box_scores, np.float32), np.zeros(n, np.int64), 0.5)


def test_unknown_strategy_lists_the_agents_table():
    with pytest.raises(StrategyError) as e:
        resolve("uncertainty", "classification")
    for name in STRATEGIES:  # the agent's table, not a list of replay's own
        assert name in str(e.value)


def test_aliases_and_task_checks():
    names = [s.name for s in parse_list("least, margin,entropy,random,least", "classification")]
    assert names == ["least_confidence", "margin", "entropy", "random"]
    assert [s.name for s in parse_list("band,count,random", "detection")] == ["threshold_band", "band_count", "random"]
    with pytest.raises(StrategyError, match="does not apply to detection"):
        resolve("margin", "detection")
    with pytest.raises(StrategyError, match="consecutive frames"):
        resolve("flicker", "detection")
    with pytest.raises(StrategyError, match="no strategy"):
        parse_list(" , ", "classification")


def test_margin_picks_the_smallest_margins_as_the_agent_scores_them():
    preds = [cls_pred(0.9, 0.05, 0.05), cls_pred(0.4, 0.35, 0.25), cls_pred(0.6, 0.3, 0.1),
             cls_pred(0.34, 0.33, 0.33), cls_pred(0.98, 0.01, 0.01)]
    margin = resolve("margin", "classification")
    assert margin.pick(preds, 2, random.Random(0)) == [1, 3]
    # The scores are the agent's own Decision.uncertainty (1 - margin for margin).
    assert margin.scores(preds, random.Random(0)) == pytest.approx([0.15, 0.95, 0.7, 0.99, 0.03], abs=1e-6)
    least = resolve("least", "classification")
    assert least.pick(preds, 1, random.Random(0)) == [3]


def test_band_ranks_boxes_near_the_middle_of_the_agents_band_and_skips_the_rest():
    preds = [det_pred(0.9), det_pred(0.45, 0.95), det_pred(), det_pred(0.31)]
    band = resolve("band", "detection")
    scores = band.scores(preds, random.Random(0))
    assert scores[0] == float("-inf") and scores[2] == float("-inf")
    assert scores[1] > scores[3]
    assert band.pick(preds, 2, random.Random(0)) == [1, 3]


def test_random_is_seeded_and_uniform():
    preds = [cls_pred(0.5, 0.5)] * 100
    rnd = resolve("random", "classification")
    a = rnd.pick(preds, 10, random.Random(7))
    assert a == rnd.pick(preds, 10, random.Random(7))
    assert a != rnd.pick(preds, 10, random.Random(8))
    assert len(set(a)) == 10


def test_ties_are_broken_by_the_seed_not_by_file_order():
    preds = [cls_pred(0.5, 0.5)] * 50  # every frame equally unsure
    margin = resolve("margin", "classification")
    picks = {tuple(margin.pick(preds, 5, random.Random(s))) for s in range(5)}
    assert len(picks) > 1


def _examples(n_per_class: int, classes=("a", "b", "c")) -> list[Example]:
    return [Example(id=f"{c}{i:03d}", image_path=Path(f"/nonexistent/{c}{i}.png"), label=c)
            for c in classes for i in range(n_per_class)]


def test_hold_out_is_stratified_frozen_and_disjoint():
    examples = _examples(50)
    settings = ReplaySettings(test_fraction=0.2)
    split = hold_out(examples, "classification", settings)
    assert len(split.test) == 30 and len(split.pool) == 120
    assert {e.label for e in split.test} == {"a", "b", "c"}
    assert all(sum(e.label == c for e in split.test) == 10 for c in "abc")
    assert not {e.id for e in split.test} & {e.id for e in split.pool}
    again = hold_out(list(reversed(examples)), "classification", settings)
    assert {e.id for e in again.test} == {e.id for e in split.test}


def test_seed_set_takes_k_per_class_and_is_deterministic():
    pool = _examples(20)
    chosen = seed_set(pool, "classification", 2, random.Random(1))
    assert sorted(pool[i].label for i in chosen) == ["a", "a", "b", "b", "c", "c"]
    assert chosen == seed_set(pool, "classification", 2, random.Random(1))
    # Detection: images that show the class; one image with both counts for both.
    det = [Example(id=f"d{i}", image_path=Path("/x"), boxes=(LabeledBox(0, 0, 1, 1, "cat" if i % 2 else "dog"),))
           for i in range(10)]
    picked = seed_set(det, "detection", 1, random.Random(0))
    assert sorted(det[i].boxes[0].label for i in picked) == ["cat", "dog"]


def test_batch_sizes_for_rounds_and_budget():
    assert batch_sizes(ReplaySettings(batch=40, rounds=3), 20, 1000) == [40, 40, 40]
    assert batch_sizes(ReplaySettings(batch=40, rounds=3), 20, 50) == [40, 10]  # the pool runs out
    assert batch_sizes(ReplaySettings(batch=40, rounds=None, budget=120), 20, 1000) == [40, 40, 20]
    assert batch_sizes(ReplaySettings(batch=40, budget=10), 20, 1000) == []


def test_area_under_curve_and_summary():
    flat = [{"labels": 10, "metric": 0.5}, {"labels": 50, "metric": 0.5}]
    rising = [{"labels": 10, "metric": 0.0}, {"labels": 20, "metric": 1.0}, {"labels": 30, "metric": 1.0}]
    assert report.area_under_curve(flat) == pytest.approx(0.5)
    assert report.area_under_curve(rising) == pytest.approx(0.75)
    s = report.summarize({"m": [rising, rising], "r": [flat]})
    assert s["m"]["auc_mean"] == pytest.approx(0.75) and s["m"]["auc_std"] == 0.0
    assert s["m"]["final_labels"] == 30 and s["r"]["seeds"] == 1


def test_every_replay_option_is_documented():
    import argparse

    from trainer.replay.cli import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "replay.md").read_text()
    options = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    missing = [o for o in options if f"`{o}" not in doc]
    assert not missing, f"docs/replay.md does not document {missing}"


def test_every_dataset_format_is_recognised_and_read_by_the_import_readers(tmp_path: Path):
    from trainer.data import write_coco, write_imagefolder, write_voc, write_yolo
    from trainer.replay.datasets import generate, load_examples, sniff_format

    det = generate("shapes", 30, "detection", tmp_path / "gen", seed=0)
    cls = generate("shapes", 30, "classification", tmp_path / "gen", seed=0)
    write_coco(det, tmp_path / "coco")
    write_yolo(det, tmp_path / "yolo")
    write_voc(det, tmp_path / "voc")
    write_imagefolder(cls, tmp_path / "folder")
    for fmt, examples in (("coco", det), ("yolo", det), ("voc", det), ("imagefolder", cls)):
        path = tmp_path / ("folder" if fmt == "imagefolder" else fmt)
        assert sniff_format(path) == fmt
        read = load_examples(str(path), "auto", tmp_path / "cache")
        assert len(read) == len(examples)
        assert all(e.split is None and e.round_added == 0 for e in read)  # replay holds out its own test split


def test_training_settings_layer_replay_options_over_a_trainer_config(tmp_path: Path):
    import argparse

    from trainer.replay.cli import DEFAULT_EPOCHS, build_train_config, configure
    from trainer.replay.loop import ReplayError

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["--dataset", "digits", "--out", str(tmp_path)])
    cfg = build_train_config(args, "detection")
    assert (cfg.model, cfg.epochs, cfg.num_workers, cfg.export.enabled) == ("tiny_det", DEFAULT_EPOCHS, 0, True)
    (tmp_path / "train.toml").write_text('model = "resnet18"\nepochs = 3\nlr = 0.01\n[export]\nenabled = false\n')
    args = parser.parse_args(["--dataset", "digits", "--out", str(tmp_path), "--train-config",
                              str(tmp_path / "train.toml"), "--no-augment", "--input-size", "24"])
    cfg = build_train_config(args, "classification")
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.input_size) == ("resnet18", 3, 0.01, 24)
    assert cfg.export.enabled and not cfg.augment.enabled  # replay needs the ONNX model to score the pool
    args = parser.parse_args(["--dataset", "digits", "--out", str(tmp_path), "--train-config", str(tmp_path / "no")])
    with pytest.raises(ReplayError, match="no such file"):
        build_train_config(args, "classification")
