"""When does the next training round start? A pure decision over counts, and what counts.

The seed's practice: add 30 to 50 corrected errors per iteration, then
retrain. What counts is configured (``RoundsConfig.trigger_count``):

- ``"labels"``: every edge sample labelled since the last round started;
- ``"corrections"``: only those where the reviewer changed the model's
  answer: a class other than the predicted one, or boxes other than the
  predicted boxes (moved, added, removed or relabelled). Accepting the
  model's prediction teaches it little and does not count.

Labels that arrive while a round runs count towards the next one, because
both counts start at the last round that was not failed or cancelled.
``count_new_labels`` reads the store (through its read connection, no
writes); ``decide`` is pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

TriggerCount = Literal["labels", "corrections"]
COUNT_WORDS = {"labels": "labelled examples", "corrections": "corrections"}

BATCH_MIN, BATCH_MAX, BATCH_DEFAULT = 30, 50, 40


@dataclass(frozen=True)
class TriggerDecision:
    start: bool
    reason: str
    corrected: int
    batch_size: int


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not BATCH_MIN <= batch_size <= BATCH_MAX:
        raise ValueError(f"batch size must be an integer from {BATCH_MIN} to {BATCH_MAX}, got {batch_size!r}")
    return batch_size


def decide(corrected: int, batch_size: int = BATCH_DEFAULT, running: bool = False,
           count: TriggerCount = "labels") -> TriggerDecision:
    """Start a round when ``corrected`` (what ``count`` counts) reaches ``batch_size`` and none is running."""
    check_batch_size(batch_size)
    if corrected < 0:
        raise ValueError(f"corrected must be >= 0, got {corrected}")
    what = "corrected examples" if count == "labels" else COUNT_WORDS[count]
    if running:
        return TriggerDecision(False, f"a round is running; new {COUNT_WORDS[count]} count towards the next one",
                               corrected, batch_size)
    if corrected < batch_size:
        return TriggerDecision(False, f"{corrected} of {batch_size} {what}", corrected, batch_size)
    return TriggerDecision(True, f"{corrected} {what} reached the batch of {batch_size}", corrected, batch_size)


_SINCE_LAST_ROUND = ("SELECT e.label, e.boxes, s.predicted_label, s.prediction, s.task FROM examples e"
                     " LEFT JOIN samples s ON s.example_id = e.id"
                     " WHERE e.source = 'edge' AND e.status = 'labeled' AND e.labeled_at > ?")


def count_new_labels(store, count: TriggerCount = "labels") -> int:
    """Edge samples labelled since the last round started; with ``"corrections"`` only the corrected ones."""
    if count == "labels":
        return store.corrected_since_last_round()
    db = store.db.read()
    row = db.execute("SELECT max(started) FROM rounds WHERE state NOT IN ('failed', 'cancelled')").fetchone()
    rows = db.execute(_SINCE_LAST_ROUND, [row[0] or 0.0]).fetchall()
    return sum(1 for label, boxes, predicted, prediction, task in rows
               if is_correction(label, json.loads(boxes or "[]"), predicted,
                                json.loads(prediction) if prediction else None, task))


def is_correction(label: str | None, boxes: list[dict], predicted_label: str | None, prediction: dict | None,
                  task: str | None) -> bool:
    """Did the reviewer change the model's answer? (No prediction at all: the label is all new.)"""
    if prediction is None:
        return True
    if task == "classification" or (task is None and label is not None):
        return label != predicted_label
    return _box_set(boxes) != _box_set(prediction.get("boxes", []))


def _box_set(boxes: list[dict]) -> list[tuple]:
    # Rounded so that a float round trip through JSON is not an edit; sorted: order is not an edit either.
    return sorted((b["label"], *(round(float(b[k]), 4) for k in ("x1", "y1", "x2", "y2"))) for b in boxes)
