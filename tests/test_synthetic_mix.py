"""Synthetic mixing on a real store: the configured share, marked synthetic, train only, into the round."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.store import Store, new_example
from trainer.synthetic.mix import SyntheticMix, top_up, wanted
from trainer.synthetic.shapes import CLASSES, ShapesGenerator
from trainer.train.splits import assign_splits


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data")
    real = ShapesGenerator(size=32).generate(30, np.random.default_rng(1), tmp_path / "real")
    s.add_examples([new_example(e.image_path.read_bytes(), label=e.label, source="import", origin=e.id,
                                split="train" if i < 24 else ("val" if i < 27 else "test"))
                    for i, e in enumerate(real)], task="classification", labels=CLASSES)
    yield s
    s.close()


def test_wanted_tops_up_to_the_share_and_no_further():
    assert wanted(60, 0, 0.25) == 20   # 20 of 80 is 25 %
    assert wanted(60, 20, 0.25) == 0
    assert wanted(60, 30, 0.25) == 0   # never removes
    assert wanted(0, 0, 0.5) == 0


def test_a_round_start_mixes_the_configured_share_into_training_only(store):
    mix = SyntheticMix(generator="shapes", share=0.2, params={"size": 32, "drift": 0.5})
    assert top_up(store, mix, 1) == 6  # 24 real train examples: 6 more make 20 %
    synthetic = [e for e in store.examples() if e.source == "synthetic"]
    assert len(synthetic) == 6 and {e.split for e in synthetic} == {"train"}
    assert all(e.round_added == 0 and e.label in CLASSES for e in synthetic)
    assert top_up(store, mix, 2) == 0  # the share is met: nothing more
    assert store.stats()["sources"] == {"import": 30, "synthetic": 6}  # what the dataset page shows
    # the trainer's split assignment keeps them in train, the real val/test untouched
    examples = store.examples()
    splits = assign_splits(examples, {e.id: e.split for e in examples if e.split})
    assert {splits[e.id] for e in examples if e.source == "synthetic"} == {"train"}
    assert sum(1 for e in examples if splits[e.id] in ("val", "test")) == 6


def test_a_generator_for_another_task_or_classes_adds_nothing(store, caplog):
    assert top_up(store, SyntheticMix(params={"task": "detection"}), 1) == 0
    assert "the project is classification" in caplog.text


def test_mixing_is_configured_strictly():
    from pydantic import ValidationError

    from trainer.rounds.pipeline import RoundsConfig

    assert RoundsConfig(synthetic={"share": 0.3}).synthetic.share == 0.3
    for bad in ({"share": 0}, {"share": 0.95}, {"shares": 0.2}):
        with pytest.raises(ValidationError):
            RoundsConfig(synthetic=bad)
