"""Score model files on the frozen test split, through the runtime the agents use.

The gate must compare the candidate and the fleet model on the same
examples: each round's own test metrics are measured on that round's test
split, which grows as new data arrives, so two rounds' figures are not
comparable. Running both exported ONNX files through ``agent.model`` also
judges exactly what the fleet would run (preprocessing and decoding included).

Detection keeps every box down to ``EVAL_SCORE_FLOOR``, as COCO evaluation
does, not only those above the card's ``score_threshold``: AP integrates
precision over all scores, and a cut at the threshold would give a model
whose correct boxes all score just below it an mAP of 0. The agents still
apply the card's threshold at run time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from trainer.dataset import Example

log = logging.getLogger(__name__)
EVAL_SCORE_FLOOR = 0.001  # COCO / YOLO validation practice; max_detections still caps each image


def evaluate_model(model_path: str | Path, examples: Sequence[Example], labels: Sequence[str], task: str) -> dict:
    """Metrics of one ONNX model on ``examples``, with classes named by ``labels`` (the candidate's)."""
    from agent.model import ModelRunner
    from trainer.train.metrics import classification_metrics, detection_metrics

    runner = ModelRunner.load(Path(model_path), ["cpu"], score_floor=EVAL_SCORE_FLOOR)
    index = {name: i for i, name in enumerate(labels)}
    examples = _readable(examples)
    if task == "classification":
        y_true, y_pred = [], []
        for ex, image in examples:
            pred = runner.infer(image)
            truth = index[ex.label]
            name = pred.labels[int(np.argmax(pred.scores))]
            # Labels are only ever appended, so an older model knows a subset of them; a name
            # outside the set (a foreign model) is counted as a miss.
            y_true.append(truth)
            y_pred.append(index.get(name, (truth + 1) % len(labels)))
        return classification_metrics(y_true, y_pred, labels)
    preds, targets = [], []
    for ex, image in examples:
        h, w = image.shape[:2]
        pred = runner.infer(image)
        keep = [i for i, lab in enumerate(pred.box_labels) if pred.labels[int(lab)] in index]
        scale = np.array([w, h, w, h], np.float32)
        preds.append({"boxes": pred.boxes[keep] * scale, "scores": pred.box_scores[keep],
                      "labels": [index[pred.labels[int(pred.box_labels[i])]] + 1 for i in keep]})
        targets.append({"boxes": [[b.x1 * w, b.y1 * h, b.x2 * w, b.y2 * h] for b in ex.boxes],
                        "labels": [index[b.label] + 1 for b in ex.boxes]})
    return detection_metrics(preds, targets, labels)


def _readable(examples: Sequence[Example]) -> list[tuple[Example, np.ndarray]]:
    """The test examples with their images; an unreadable file is logged and left out, the same for both
    models, rather than failing the whole round."""
    out = []
    for ex in examples:
        image = cv2.imread(str(ex.image_path), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("gate: test image %s of example %s cannot be read; left out", ex.image_path, ex.id)
            continue
        out.append((ex, image))
    return out


def same_split_metrics(candidate_path: str, current_path: str, test: Sequence[Example], labels: Sequence[str],
                       task: str) -> tuple[dict, dict]:
    """(candidate, current) metrics on the same test examples, each as {headline..., per_class}."""
    cand = evaluate_model(candidate_path, test, labels, task)
    cur = evaluate_model(current_path, test, labels, task)
    strip = ("confusion", "labels")
    return ({k: v for k, v in cand.items() if k not in strip}, {k: v for k, v in cur.items() if k not in strip})
