"""``edgeloop train`` and ``edgeloop augment-preview`` as a user runs them."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeloop.cli import main
from trainer.synthetic import get_generator
from trainer.train import cli as train_cli

ROOT = Path(__file__).resolve().parents[1]


def options_of(configure) -> list[str]:
    parser = argparse.ArgumentParser()
    configure(parser)
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]


def test_help_and_docs_describe_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    docs = (ROOT / "docs" / "training.md").read_text()
    for option in options_of(train_cli.configure):
        assert re.search(rf"{option}\b", text), option
        assert f"`{option}" in docs, f"docs/training.md does not document {option}"


@pytest.mark.slow
def test_train_command_writes_a_round(tmp_path: Path, capsys):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"num_workers": 0, "augment": {"vflip": 0.0, "erase": 0.1}}))
    # An ImageFolder tree, read by trainer.data like a user's own images.
    for e in get_generator("shapes").generate(45, np.random.default_rng(4), tmp_path / "gen"):
        (tmp_path / "data" / e.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(e.image_path, tmp_path / "data" / e.label / e.image_path.name)
    rc = main(["train", "--dataset", str(tmp_path / "data"), "--format", "imagefolder", "--epochs", "1",
               "--input-size", "32", "--config", str(config), "--out", str(tmp_path / "out"), "--name", "cli-model",
               "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["round"] == 0 and summary["model"] == "small_cnn" and "accuracy" in summary["metrics"]
    assert summary["labels"] == ["circle", "square", "triangle"] and sum(summary["split_counts"].values()) == 45
    assert Path(summary["onnx"]).exists() and Path(summary["checkpoint"]).exists()
    record = json.loads((tmp_path / "out" / "round.json").read_text())
    assert record["config"]["augment"]["erase"] == 0.1 and record["config"]["epochs"] == 1


def test_train_command_explains_a_refusal(tmp_path: Path, capsys):
    assert main(["train", "--synthetic", "shapes", "--n", "8", "--out", str(tmp_path)]) == 1
    assert "only 8 example(s)" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"augment": {"vertical_flip": 0.5}}))
    assert main(["train", "--synthetic", "shapes", "--config", str(bad), "--out", str(tmp_path)]) == 1
    assert "augment.vertical_flip" in capsys.readouterr().err


def test_augment_preview_writes_a_grid(tmp_path: Path):
    out = tmp_path / "grid.png"
    assert main(["augment-preview", "--synthetic", "shapes", "--task", "detection", "--rows", "2", "--cols", "3",
                 "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == (3 * 128 + 4 * 2, 2 * 128 + 3 * 2)


def test_docs_describe_every_config_key():
    from trainer.train.config import AugmentConfig, ExportConfig, SplitConfig, TrainConfig

    docs = (ROOT / "docs" / "training.md").read_text()
    for key in TrainConfig.model_fields:
        if key not in ("splits", "augment", "export"):
            assert f"`{key}`" in docs, key
    for prefix, model in (("splits.", SplitConfig), ("export.", ExportConfig)):
        for key in model.model_fields:
            assert f"`{prefix}{key}`" in docs, prefix + key
    for key in AugmentConfig.model_fields:
        assert f"`{key}`" in docs, "augment." + key
