"""Classification metrics against scikit-learn on fixed labels."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion, precision_recall_fscore_support

from trainer.train.metrics import classification_metrics, confusion_matrix


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 200).tolist()
    y_pred = [t if rng.uniform() < 0.7 else int(rng.integers(0, 4)) for t in y_true]
    labels = ["a", "b", "c", "d"]
    m = classification_metrics(y_true, y_pred, labels)
    p, r, _, support = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    assert m["accuracy"] == pytest.approx(np.mean(np.array(y_true) == np.array(y_pred)))
    for i, name in enumerate(labels):
        assert m["per_class"][name]["precision"] == pytest.approx(p[i])
        assert m["per_class"][name]["recall"] == pytest.approx(r[i])
        assert m["per_class"][name]["support"] == support[i]
    assert m["confusion"] == sk_confusion(y_true, y_pred, labels=range(4)).tolist()


def test_never_predicted_class_has_zero_precision_not_nan():
    m = classification_metrics([0, 1, 2], [0, 0, 0], ["a", "b", "c"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "support": 1}
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert confusion_matrix([], [], 2) == [[0, 0], [0, 0]]
