"""Pure evaluation functions: inputs in, numbers out, no model or device involved.

Detection mAP is computed by torchmetrics (COCO protocol via faster-coco-eval);
tests/test_metrics_map.py checks it against pycocotools on fixed predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> list[list[int]]:
    """Rows are the true class, columns the predicted class."""
    m = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(y_true, y_pred, strict=True):
        m[t][p] += 1
    return m


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """Accuracy, per-class precision/recall/support and the confusion matrix.

    A class never predicted has precision 0 (not NaN) so averages stay defined;
    its support says whether that matters.
    """
    n = len(labels)
    cm = confusion_matrix(y_true, y_pred, n)
    total = sum(map(sum, cm))
    correct = sum(cm[i][i] for i in range(n))
    per_class = {}
    for i, name in enumerate(labels):
        predicted = sum(cm[r][i] for r in range(n))
        support = sum(cm[i])
        per_class[name] = {
            "precision": cm[i][i] / predicted if predicted else 0.0,
            "recall": cm[i][i] / support if support else 0.0,
            "support": support,
        }
    return {"accuracy": correct / total if total else 0.0, "per_class": per_class, "confusion": cm,
            "labels": list(labels), "n": total}


def detection_metrics(predictions: Sequence[dict], targets: Sequence[dict], labels: Sequence[str]) -> dict:
    """mAP@0.5 and mAP@0.5:0.95, overall and per class.

    ``predictions``: per image ``{"boxes": [K,4] xyxy, "scores": [K], "labels": [K]}``;
    ``targets``: per image ``{"boxes", "labels"}``; labels are 1-based indices
    into ``labels`` (0 is background), boxes in any common pixel scale.
    Every prediction counts, whatever its score: pass them down to a low
    floor (COCO keeps 100 per image), not cut at a deployment threshold.
    A class with no ground truth in the set gets ``None``; ``support`` is its
    number of ground-truth boxes (the gate ignores classes with too few).
    """
    from torchmetrics.detection import MeanAveragePrecision

    def as_tensors(items: Sequence[dict], with_scores: bool) -> list[dict]:
        out = []
        for d in items:
            t = {"boxes": torch.as_tensor(d["boxes"], dtype=torch.float32).reshape(-1, 4),
                 "labels": torch.as_tensor(d["labels"], dtype=torch.int64).reshape(-1)}
            if with_scores:
                t["scores"] = torch.as_tensor(d["scores"], dtype=torch.float32).reshape(-1)
            out.append(t)
        return out

    # faster-coco-eval prints its whole summary table at INFO for every compute().
    logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)
    preds, gts = as_tensors(predictions, True), as_tensors(targets, False)
    results = {}
    # COCO's exact float64 thresholds: torchmetrics' defaults are float32 and move
    # the recall steps enough to change AP on small test sets.
    coco_iou = np.linspace(0.5, 0.95, 10).tolist()
    coco_recall = np.linspace(0.0, 1.0, 101).tolist()
    for key, thresholds in (("map", coco_iou), ("map_50", [0.5])):
        metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True, iou_thresholds=thresholds,
                                      rec_thresholds=coco_recall, backend="faster_coco_eval")
        metric.update(preds, gts)
        results[key] = metric.compute()
    support = torch.bincount(torch.cat([t["labels"] for t in gts] or [torch.zeros(0, dtype=torch.int64)]),
                             minlength=len(labels) + 1).tolist()
    per_class = {name: {"ap": None, "ap_50": None, "support": int(support[i + 1])} for i, name in enumerate(labels)}
    for key, ap_key in (("map", "ap"), ("map_50", "ap_50")):
        r = results[key]
        classes = r["classes"].reshape(-1).tolist()
        values = r["map_per_class"].reshape(-1).tolist()
        for c, v in zip(classes, values):
            if 1 <= c <= len(labels) and v >= 0:
                per_class[labels[c - 1]][ap_key] = float(v)
    return {"map": _clean(results["map"]["map"]), "map_50": _clean(results["map_50"]["map"]),
            "per_class": per_class, "labels": list(labels), "n": len(gts)}


def _clean(v: torch.Tensor) -> float:
    x = float(v)
    return x if x >= 0 else 0.0  # torchmetrics says -1 when there is no ground truth at all
