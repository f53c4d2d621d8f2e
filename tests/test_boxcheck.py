"""Suspicious boxes are named on the dataset page and in the round report; augmentation counts what it drops."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from trainer.dataset import Example, LabeledBox
from trainer.store import Store, new_example
from trainer.train import data as D
from trainer.train.augment import build_transform, dropped_boxes
from trainer.train.boxcheck import check_boxes, round_warnings, warnings
from trainer.train.config import AugmentConfig


def _png(w: int = 200, h: int = 100, seed: int = 0) -> bytes:
    ok, buf = cv2.imencode(".png", np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return buf.tobytes()


SUSPECTS = {  # in a 200 x 100 image
    "fine": LabeledBox(0.1, 0.1, 0.4, 0.5, "car"),
    "tiny": LabeledBox(0.5, 0.5, 0.51, 0.6, "car"),  # 2 px wide
    "whole_frame": LabeledBox(0.0, 0.02, 1.0, 0.98, "car"),
    "degenerate": LabeledBox(0.3, 0.3, 0.3, 0.6, "car"),
    "out_of_frame": LabeledBox(0.8, 0.5, 1.2, 0.9, "car"),
}


def test_each_check_fires_once_on_its_box():
    items = [(f"ex-{name}", [box], 200, 100) for name, box in SUSPECTS.items()]
    q = check_boxes(items)
    assert q.boxes == 5
    assert q.counts == {"tiny": 1, "whole_frame": 1, "degenerate": 1, "out_of_frame": 1}
    assert q.examples["tiny"] == ["ex-tiny"]
    lines = warnings(q)
    assert len(lines) == 4
    assert "1 of 5 boxes are under 4 px wide or high in their image (e.g. example ex-tiny)" in lines[2]
    # Without the image size, pixel checks cannot judge: only the geometric ones remain.
    assert "tiny" not in check_boxes([(i, b, 0, 0) for i, b, _, _ in items]).counts


def test_dataset_page_warns_about_suspicious_boxes(tmp_path: Path):
    with Store(tmp_path / "s") as store:
        rows = [new_example(_png(seed=i), boxes=(box,), status="labeled", source="import", origin=f"t:{name}")
                for i, (name, box) in enumerate(SUSPECTS.items())]
        store.add_examples(rows, task="detection", labels=["car"])
        found = [w for w in store.stats()["warnings"] if "boxes" in w]
    assert len(found) == 5, found
    assert any("cover 90% or more of their image" in w for w in found)
    assert "class 'car' has 5 boxes; at least 10 are needed to train" in found


def _examples(tmp: Path) -> list[Example]:
    out = []
    for i in range(8):
        path = tmp / f"img{i}.png"
        path.write_bytes(_png(64, 64, i))
        boxes = (LabeledBox(0.2, 0.2, 0.6, 0.6, "car"), LabeledBox(0.7, 0.1, 0.71, 0.3, "car"))  # 0.64 px at 64
        out.append(Example(id=f"img{i}", image_path=path, boxes=boxes, split="train",
                           meta={"width": 64, "height": 64}))
    return out


@pytest.mark.parametrize("workers", [0, 1])
def test_augmentation_counts_the_boxes_it_drops_in_workers_too(tmp_path: Path, workers: int):
    examples = _examples(tmp_path)
    # Shifts only (no rotation, scaling or perspective, which could widen the thin box past 2 px).
    cfg = AugmentConfig(translate=0.45, hflip=0.5, rotate_degrees=0, scale=(1.0, 1.0), perspective=0)
    train_ds = D.ExampleDataset(examples, ["car"], "detection", 64, build_transform(cfg, "detection", 64, True))
    eval_tf = build_transform(cfg, "detection", 64, False)
    test_ds = D.ExampleDataset(examples, ["car"], "detection", 64, eval_tf)
    kept = 0
    torch.manual_seed(0)
    for _ in range(3):
        for _images, targets in DataLoader(train_ds, batch_size=4, num_workers=workers,
                                           collate_fn=D.collate("detection")):
            kept += sum(len(t["boxes"]) for t in targets)
    counts = dropped_boxes(train_ds.transform)
    assert counts["seen"] == 3 * 16 and counts["seen"] - counts["dropped"] == kept
    assert counts["dropped"] >= 24  # every thin box, every time: too small, or moved off the image
    assert counts["too_small"] > 0 and counts["outside"] > 0  # a 45 % shift moves some boxes off the image
    report = round_warnings(examples, "detection", 64, {"train": DataLoader(train_ds), "val": None,
                                                        "test": DataLoader(test_ds)})
    lines = report["warnings"]
    assert any(line.startswith("8 boxes are under 2 px at the 64 px input size") for line in lines), lines
    assert any(line.startswith(f"train pipeline: {counts['dropped']} of 48 boxes drawn were dropped")
               for line in lines), lines
    assert report["box_checks"]["dataset"]["counts"] == {"tiny": 8}


def test_classification_rounds_have_no_box_section():
    assert round_warnings([], "classification", 64, {}) == {"warnings": []}


def test_a_detection_round_report_lists_its_box_warnings(tmp_path: Path):
    from trainer.synthetic import get_generator
    from trainer.train.config import TrainConfig
    from trainer.train.round import run_round

    examples = get_generator("shapes", task="detection").generate(24, np.random.default_rng(3), tmp_path / "img")
    first = examples[0]
    examples[0] = Example(id=first.id, image_path=first.image_path, meta=first.meta,
                          boxes=first.boxes + (LabeledBox(0.0, 0.0, 1.0, 1.0, first.boxes[0].label),))
    quick = {"min_steps": 0} if "min_steps" in TrainConfig.model_fields else {}  # one epoch is enough here
    cfg = TrainConfig(task="detection", model="tiny_det", input_size=64, batch_size=8, epochs=1, num_workers=0,
                      export={"enabled": False}, **quick)
    run_round(examples, cfg, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "round.json").read_text())
    assert any("cover 90% or more of their image" in w and first.id in w for w in record["warnings"])
    assert record["box_checks"]["dataset"]["counts"]["whole_frame"] == 1
    assert set(record["box_checks"]["augmentation"]) == {"train", "val+test"}
