"""Training rounds end to end on generated data, on the CPU, with tiny models.

One classifier round is trained once per module and reused; incremental,
interrupted and cancelled rounds build on it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.synthetic import get_generator
from trainer.train.checkpoint import load_checkpoint
from trainer.train.config import TrainConfig
from trainer.train.errors import RoundCancelled, TrainingError
from trainer.train.round import run_round

pytestmark = pytest.mark.slow

FAST = {"input_size": 32, "batch_size": 16, "num_workers": 0, "epochs": 3}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("round0")
    examples = get_generator("shapes").generate(60, np.random.default_rng(0), root / "images")
    epochs = []
    result = run_round(examples, TrainConfig(**FAST), root / "out", name="shapes-cls", on_epoch=epochs.append)
    return examples, result, root, epochs


def test_a_round_writes_checkpoint_model_and_report(base):
    examples, result, root, epochs = base
    out = root / "out"
    assert result.round == 0 and result.task == "classification" and result.labels == ["circle", "square", "triangle"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "confusion.png", "curves.png", "model.onnx", "model.pt", "round.json"]
    assert [e.epoch for e in epochs] == [0, 1, 2] and all(e.val_loss is not None for e in epochs)
    assert result.split_counts == {"train": 48, "val": 6, "test": 6}
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and set(result.metrics["per_class"]) == set(result.labels)
    assert result.stop_reason in ("completed", "early_stopping", "overfitting")
    assert result.imbalance["method"] == "sampler" and sum(result.imbalance["train_counts"].values()) == 48
    for png in ("curves.png", "confusion.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_round_record_makes_it_reproducible(base):
    examples, result, root, _ = base
    record = json.loads((root / "out" / "round.json").read_text())
    assert record["seed"] == 0 and record["config"]["model"] == "small_cnn"
    assert record["dataset_version"] == result.dataset_version and len(record["dataset_version"]) == 16
    assert record["code_version"] and len(record["fit"]["history"]) == 3
    assert record["metrics"]["test"]["accuracy"] == result.metrics["accuracy"]
    ckpt = load_checkpoint(root / "out" / "model.pt")
    assert ckpt["model_name"] == "small_cnn" and ckpt["labels"] == result.labels and ckpt["splits"] == result.splits
    # same inputs, same split
    again = run_round(examples, TrainConfig(**FAST | {"epochs": 1}, export={"enabled": False}), root / "again")
    assert again.splits == result.splits and again.dataset_version == result.dataset_version


def test_fewer_than_ten_per_class_refuses_before_training(tmp_path: Path, base):
    examples = base[0]
    few = [e for e in examples if e.label != "square"] + [e for e in examples if e.label == "square"][:4]
    with pytest.raises(TrainingError, match=r"'square' has 4.*at least 10"):
        run_round(few, TrainConfig(**FAST), tmp_path)
    assert not tmp_path.joinpath("model.pt").exists()


def new_batch(root: Path, n: int, round_added: int, seed: int):
    return get_generator("shapes", drift=0.5, round_added=round_added).generate(
        n, np.random.default_rng(seed), root / f"new{round_added}")


def test_incremental_round_starts_from_the_parent_and_keeps_the_test_split(base, tmp_path: Path):
    examples, parent, root, _ = base
    added = new_batch(tmp_path, 30, 1, seed=11)
    # A vanishing learning rate: an incremental round must end next to its parent, a retrain far from it.
    cfg = TrainConfig(**FAST | {"epochs": 1, "lr": 1e-9}, export={"enabled": False})
    inc = run_round(examples + added, cfg, tmp_path / "inc", parent=root / "out" / "model.pt")
    full = run_round(examples + added, cfg.model_copy(update={"full_retrain": True}), tmp_path / "full",
                     parent=root / "out" / "model.pt")
    parent_w = load_checkpoint(root / "out" / "model.pt")["state_dict"]

    def distance(path):
        w = load_checkpoint(path)["state_dict"]
        return sum(float((w[k].float() - parent_w[k].float()).abs().sum()) for k in parent_w if "weight" in k)
    assert distance(tmp_path / "inc" / "model.pt") < 1e-3 < distance(tmp_path / "full" / "model.pt")
    assert inc.round == 1 and inc.imbalance["new_examples_in_train"] > 0 and inc.imbalance["new_weight"] == 3.0
    for splits in (inc.splits, full.splits):
        assert {k: splits[k] for k in parent.splits} == parent.splits  # nothing moved
        new_test = {k for k, v in splits.items() if v == "test"} - {k for k, v in parent.splits.items() if v == "test"}
        assert new_test and new_test <= {e.id for e in added}
        assert not {k for k, v in parent.splits.items() if v == "test"} & {k for k, v in splits.items() if v == "train"}


def test_an_interrupted_round_leaves_the_previous_model_intact(base, tmp_path: Path):
    examples, _, root, _ = base
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    before = {p.name: digest(p) for p in out.iterdir()}

    def crash(stats):
        if stats.epoch == 1:
            raise RuntimeError("power cut")
    with pytest.raises(RuntimeError, match="power cut"):
        run_round(examples, TrainConfig(**FAST), out, parent=out / "model.pt", on_epoch=crash)
    with pytest.raises(RoundCancelled):
        run_round(examples, TrainConfig(**FAST), out, parent=out / "model.pt", should_cancel=lambda: True)
    assert {p.name: digest(p) for p in out.iterdir()} == before
    assert load_checkpoint(out / "model.pt")["round"] == 0


def test_overfitting_is_detected_on_a_deliberately_overfit_run(base, tmp_path: Path):
    examples = base[0][:36]
    # Labels that have nothing to do with the image: the net can only memorize.
    noisy = [replace(e, label=("circle", "square", "triangle")[i % 3]) for i, e in enumerate(examples)]
    cfg = TrainConfig(input_size=32, epochs=60, batch_size=8, lr=5e-3, patience=100, num_workers=0,
                      augment={"enabled": False}, export={"enabled": False}, splits={"ratios": (0.5, 0.25, 0.25)})
    result = run_round(noisy, cfg, tmp_path)
    h = result.fit.history
    assert result.overfit and result.stop_reason == "overfitting"
    e = result.fit.overfit_epoch
    n = cfg.overfit_epochs
    assert all(h[i].val_loss > h[i - 1].val_loss for i in range(e - n + 1, e + 1)) and h[e].loss < h[e - n].loss
    assert result.fit.best_epoch < e  # the kept checkpoint predates the overfitting
    assert json.loads((tmp_path / "round.json").read_text())["fit"]["overfit"] is True


def test_a_tiny_detector_trains_and_exports(tmp_path: Path):
    examples = get_generator("shapes", task="detection").generate(30, np.random.default_rng(3), tmp_path / "img")
    cfg = TrainConfig(model="tiny_det", input_size=64, epochs=2, batch_size=8, num_workers=0)
    result = run_round(examples, cfg, tmp_path / "out", name="shapes-det")
    assert result.task == "detection" and result.labels == ["circle", "square", "triangle"]
    assert set(result.metrics) >= {"map", "map_50", "per_class"}
    assert result.fit.history[-1].loss < result.fit.history[0].loss
    assert result.export_check["max_abs_diff"] < 1e-3 and (tmp_path / "out" / "model.onnx").exists()
    assert torch.load(tmp_path / "out" / "model.pt", weights_only=True)["task"] == "detection"
