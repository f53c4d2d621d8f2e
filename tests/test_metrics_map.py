"""Detection mAP (torchmetrics) agrees with pycocotools on the same fixed predictions."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from trainer.train.metrics import detection_metrics

LABELS = ["circle", "square", "triangle"]


def fixed_set(seed: int = 0):
    """Ground truth and jittered, partly wrong predictions with scores, in pixels."""
    rng = np.random.default_rng(seed)
    targets, preds = [], []
    for _ in range(12):
        k = int(rng.integers(1, 5))
        xy = rng.uniform(0, 80, (k, 2))
        wh = rng.uniform(12, 45, (k, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(1, 4, k)
        targets.append({"boxes": boxes, "labels": labels})
        pb = boxes + rng.normal(0, 4, boxes.shape)
        pl = np.where(rng.uniform(size=k) < 0.8, labels, rng.integers(1, 4, k))
        extra = int(rng.integers(0, 3))  # false positives
        exy = rng.uniform(0, 90, (extra, 2))
        pb = np.concatenate([pb, np.concatenate([exy, exy + 20], 1)])
        pl = np.concatenate([pl, rng.integers(1, 4, extra)])
        preds.append({"boxes": pb, "labels": pl, "scores": rng.uniform(0.05, 1.0, len(pl))})
    return preds, targets


def pycocotools_map(preds, targets):
    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets)):
        images.append({"id": i, "width": 128, "height": 128})
        for b, lab in zip(t["boxes"], t["labels"]):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(lab), "bbox": [*b[:2], w, h],
                         "area": float(w * h), "iscrowd": 0})
        for b, lab, s in zip(p["boxes"], p["labels"], p["scores"]):
            dets.append({"image_id": i, "category_id": int(lab), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "score": float(s)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in (1, 2, 3)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, 2]  # [iou, recall, class] at area=all, maxDets=100

    def ap(p):
        p = p[p > -1]
        return float(p.mean()) if p.size else -1.0
    per_class = {LABELS[k]: {"ap": ap(precision[:, :, k]), "ap_50": ap(precision[0, :, k])} for k in range(3)}
    return float(ev.stats[0]), float(ev.stats[1]), per_class


@pytest.mark.parametrize("seed", [0, 1])
def test_map_agrees_with_pycocotools(seed):
    preds, targets = fixed_set(seed)
    ours = detection_metrics(preds, targets, LABELS)
    ref_map, ref_map50, ref_cls = pycocotools_map(preds, targets)
    assert 0.05 < ref_map50 < 0.99  # the fixture is neither trivial nor hopeless
    assert ours["map"] == pytest.approx(ref_map, abs=1e-4)
    assert ours["map_50"] == pytest.approx(ref_map50, abs=1e-4)
    for name in LABELS:
        assert ours["per_class"][name]["ap"] == pytest.approx(ref_cls[name]["ap"], abs=1e-4)
        assert ours["per_class"][name]["ap_50"] == pytest.approx(ref_cls[name]["ap_50"], abs=1e-4)


def test_perfect_predictions_score_one_and_absent_classes_are_none():
    targets = [{"boxes": np.array([[10, 10, 50, 50.0]]), "labels": np.array([1])}]
    preds = [{"boxes": np.array([[10, 10, 50, 50.0]]), "labels": np.array([1]), "scores": np.array([0.9])}]
    m = detection_metrics(preds, targets, LABELS)
    assert m["map"] == pytest.approx(1.0) and m["map_50"] == pytest.approx(1.0)
    assert m["per_class"]["square"] == {"ap": None, "ap_50": None, "support": 0}
    assert m["per_class"]["circle"]["support"] == 1


def test_support_counts_ground_truth_boxes_per_class():
    preds, targets = fixed_set(0)
    m = detection_metrics(preds, targets, LABELS)
    want = np.bincount(np.concatenate([t["labels"] for t in targets]), minlength=4)[1:]
    assert [m["per_class"][n]["support"] for n in LABELS] == want.tolist()


def test_low_scores_count_ap_ranks_boxes_it_does_not_cut_them():
    """Perfect boxes scored 0.01-0.05 (below any deployment threshold) are a perfect ranking: mAP 1.
    Scaling every score changes nothing; only the order matters."""
    preds, targets = fixed_set(1)
    exact = [{"boxes": t["boxes"], "labels": t["labels"], "scores": np.linspace(0.01, 0.05, len(t["labels"]))}
             for t in targets]
    assert detection_metrics(exact, targets, LABELS)["map_50"] == pytest.approx(1.0)
    low = [dict(p, scores=p["scores"] * 0.01) for p in preds]
    assert detection_metrics(low, targets, LABELS)["map"] == pytest.approx(
        detection_metrics(preds, targets, LABELS)["map"], abs=1e-9)
