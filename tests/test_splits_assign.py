"""Splits: seeded, stratified, capped, append-only; and the minimum-data refusal."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from trainer.dataset import Example, LabeledBox
from trainer.train.errors import TrainingError
from trainer.train.splits import assign_splits, check_minimum, split_counts


def cls_examples(counts: dict[str, int], prefix: str = "e", round_added: int = 0) -> list[Example]:
    out = []
    for label, n in counts.items():
        out += [Example(id=f"{prefix}-{label}-{i:04d}", image_path=Path("x.png"), label=label, round_added=round_added)
                for i in range(n)]
    return out


def test_same_inputs_same_split_whatever_the_order():
    ex = cls_examples({"a": 50, "b": 30, "c": 20})
    first = assign_splits(ex, seed=7)
    shuffled = ex[:]
    random.Random(1).shuffle(shuffled)
    assert assign_splits(shuffled, seed=7) == first
    assert assign_splits(ex, seed=8) != first


def test_default_ratios_are_stratified_by_class():
    ex = cls_examples({"a": 100, "b": 50, "c": 30})
    splits = assign_splits(ex, seed=0)
    assert split_counts(ex, splits) == {"train": 144, "val": 18, "test": 18}
    test_classes = Counter(e.label for e in ex if splits[e.id] == "test")
    assert test_classes == {"a": 10, "b": 5, "c": 3}


def test_val_and_test_are_capped_at_100():
    ex = cls_examples({"a": 1500, "b": 500})
    counts = split_counts(ex, assign_splits(ex, seed=0))
    assert counts == {"train": 1800, "val": 100, "test": 100}


def test_existing_assignments_never_move_and_test_only_grows():
    old = cls_examples({"a": 40, "b": 40})
    first = assign_splits(old, seed=3)
    new = cls_examples({"a": 20, "b": 20}, prefix="new", round_added=1)
    second = assign_splits(old + new, existing=first, seed=3)
    assert {k: second[k] for k in first} == first
    old_test = {k for k, v in first.items() if v == "test"}
    new_test = {k for k, v in second.items() if v == "test"}
    assert old_test < new_test  # frozen, and new data adds to it
    assert all(k.startswith("new") for k in new_test - old_test)


def test_split_already_on_the_example_counts_as_existing():
    ex = cls_examples({"a": 20, "b": 20})
    pinned = [Example(id=e.id, image_path=e.image_path, label=e.label, split="test") for e in ex[:15]]
    splits = assign_splits(pinned + ex[15:], seed=0)
    assert all(splits[e.id] == "test" for e in pinned)
    assert split_counts(pinned + ex[15:], splits)["test"] == 15  # already above 10 %: nothing added


def test_detection_is_stratified_by_the_classes_present():
    ex = []
    for i in range(60):
        labels = ["car"] if i % 3 else ["car", "person"]
        boxes = tuple(LabeledBox(0.1, 0.1, 0.5, 0.5, lab) for lab in labels)
        ex.append(Example(id=f"d{i:03d}", image_path=Path("x.png"), boxes=boxes))
    splits = assign_splits(ex, seed=0)
    test = [e for e in ex if splits[e.id] == "test"]
    assert len(test) == 6
    assert any(len(e.boxes) == 2 for e in test) and any(len(e.boxes) == 1 for e in test)


def test_unknown_existing_split_is_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        assign_splits(cls_examples({"a": 3}), existing={"e-a-0000": "holdout"})


@settings(max_examples=40, deadline=None)
@given(n_old=st.integers(0, 120), n_new=st.integers(0, 60), seed=st.integers(0, 5))
def test_property_old_assignments_kept_and_caps_hold(n_old, n_new, seed):
    old = cls_examples({"a": n_old // 2, "b": n_old - n_old // 2})
    new = cls_examples({"a": n_new // 2, "b": n_new - n_new // 2}, prefix="n")
    first = assign_splits(old, seed=seed, caps=(None, 5, 5))
    second = assign_splits(old + new, existing=first, seed=seed, caps=(None, 5, 5))
    assert set(second) == {e.id for e in old + new}
    assert all(second[k] == v for k, v in first.items())
    counts = split_counts(old + new, second)
    assert counts["val"] <= 5 and counts["test"] <= 5


def test_fewer_than_ten_examples_is_refused_with_the_reason():
    with pytest.raises(TrainingError, match=r"only 9 example\(s\).*at least 10.*label 1 more"):
        check_minimum(cls_examples({"a": 5, "b": 4}), "classification")


def test_fewer_than_ten_per_class_is_refused_naming_the_class():
    with pytest.raises(TrainingError, match=r"'b' has 7.*at least 10"):
        check_minimum(cls_examples({"a": 30, "b": 7}), "classification")


def test_one_class_and_no_boxes_are_refused():
    with pytest.raises(TrainingError, match="at least two"):
        check_minimum(cls_examples({"a": 30}), "classification")
    empty = [Example(id=f"d{i}", image_path=Path("x.png")) for i in range(12)]
    with pytest.raises(TrainingError, match="no example has a box"):
        check_minimum(empty, "detection")
    check_minimum(cls_examples({"a": 10, "b": 10}), "classification")  # exactly enough passes


def test_detection_needs_ten_boxes_per_class_naming_the_short_ones():
    def det(counts: dict[str, int], images: int = 12) -> list[Example]:
        labels = [k for k, n in counts.items() for _ in range(n)]
        return [Example(id=f"d{i}", image_path=Path("x.png"),
                        boxes=tuple(LabeledBox(0.1, 0.1, 0.5, 0.5, lab) for lab in labels[i::images]))
                for i in range(images)]
    with pytest.raises(TrainingError, match=r"'bike' has 3 boxes, 'bus' has 1 box\).*at least 10 boxes"):
        check_minimum(det({"car": 40, "bike": 3, "bus": 1}), "detection")
    check_minimum(det({"car": 10, "bike": 10}), "detection")  # exactly enough passes


def test_a_project_class_with_no_examples_is_named_as_short():
    with pytest.raises(TrainingError, match=r"'c' has 0\)"):
        check_minimum(cls_examples({"a": 10, "b": 10}), "classification", labels=("a", "b", "c"))
    boxes = [Example(id=f"d{i}", image_path=Path("x.png"), boxes=(LabeledBox(0.1, 0.1, 0.5, 0.5, "car"),))
             for i in range(12)]
    with pytest.raises(TrainingError, match=r"'bike' has 0 boxes\)"):
        check_minimum(boxes, "detection", labels=("car", "bike"))
    check_minimum(boxes, "detection", labels=("car",))
