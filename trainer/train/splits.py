"""Train/validation/test assignment: pure, seeded, stratified, append-only.

An example keeps its split forever once assigned, so the test split is frozen
and the metrics of successive models are measured on the same images; later
rounds only add new examples to validation and test while under their caps.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

from trainer.dataset import SPLITS, Example
from trainer.train.errors import TrainingError

MIN_EXAMPLES = 10


def stratum(example: Example) -> str:
    """Classification: the label; detection: the set of classes present ('' for no objects)."""
    if example.label is not None:
        return example.label
    return "|".join(sorted({b.label for b in example.boxes}))


def assign_splits(
    examples: Sequence[Example],
    existing: Mapping[str, str] | None = None,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    caps: tuple[int | None, int | None, int | None] = (None, 100, 100),
) -> dict[str, str]:
    """Return ``{example_id: split}`` for every example.

    Assignments in ``existing`` (or already on an example) never change. New
    examples fill test, then validation, towards ``ratios`` of the whole
    dataset, stratified so each class gets its share, never beyond ``caps``;
    the rest train. Deterministic for a seed whatever the input order.
    """
    fixed = {e.id: e.split for e in examples if e.split is not None}
    fixed.update(existing or {})
    bad = {s for s in fixed.values() if s not in SPLITS}
    if bad:
        raise ValueError(f"unknown split(s) {sorted(bad)}; expected one of {SPLITS}")
    result = {e.id: fixed[e.id] for e in examples if e.id in fixed}
    new = sorted((e for e in examples if e.id not in fixed), key=lambda e: e.id)
    if not new:
        return result
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for e in new:
        by_stratum[stratum(e)].append(e.id)
    for key, ids in by_stratum.items():
        random.Random(f"{seed}/{key}").shuffle(ids)
    totals = Counter(stratum(e) for e in examples)
    kinds = {e.id: stratum(e) for e in examples}
    # Test first so that, when caps bind, test is the split that fills.
    for split, idx in (("test", 2), ("val", 1)):
        have = Counter(kinds[i] for i, s in result.items() if s == split)
        n_total = len(examples)
        target = round(ratios[idx] * n_total)
        if caps[idx] is not None:
            target = min(target, caps[idx])
        room = max(0, target - sum(have.values()))
        quotas = _quotas(room, {k: ratios[idx] * totals[k] - have[k] for k in by_stratum},
                         {k: len(v) for k, v in by_stratum.items()})
        for key, q in quotas.items():
            for example_id in by_stratum[key][:q]:
                result[example_id] = split
            by_stratum[key] = by_stratum[key][q:]
    for ids in by_stratum.values():
        for example_id in ids:
            result[example_id] = "train"
    return result


def _quotas(room: int, wanted: Mapping[str, float], available: Mapping[str, int]) -> dict[str, int]:
    """Split ``room`` slots across strata by largest remainder of what each wants."""
    want = {k: max(0.0, min(float(available[k]), w)) for k, w in wanted.items()}
    quotas = {k: int(math.floor(w)) for k, w in want.items()}
    total = sum(quotas.values())
    if total > room:  # caps bind: shrink proportionally
        scale = room / total
        quotas = {k: int(math.floor(q * scale)) for k, q in quotas.items()}
        total = sum(quotas.values())
    order = sorted(want, key=lambda k: (-(want[k] - math.floor(want[k])), -want[k], k))
    # Hand out what is left one at a time, preferring strata closest to another slot.
    while total < room:
        progressed = False
        for k in order:
            if total >= room:
                break
            if quotas[k] < available[k] and quotas[k] < math.ceil(want[k]):
                quotas[k] += 1
                total += 1
                progressed = True
        if not progressed:
            break
    return quotas


def split_counts(examples: Iterable[Example], splits: Mapping[str, str]) -> dict[str, int]:
    counts = Counter(splits[e.id] for e in examples)
    return {s: counts.get(s, 0) for s in SPLITS}


def _listed(items: list[str], most: int = 20) -> str:
    more = f", and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def check_minimum(examples: Sequence[Example], task: str, labels: Sequence[str] = ()) -> None:
    """Refuse to train on too little data, saying why and what to do.

    ``labels``: the project's classes; one with no example (or box) at all is named as short too.
    """
    n = len(examples)
    if n < MIN_EXAMPLES:
        raise TrainingError(
            f"only {n} example(s): a round needs at least {MIN_EXAMPLES} so that validation and test "
            f"have something to measure; label {MIN_EXAMPLES - n} more")
    if task == "classification":
        counts = Counter(e.label for e in examples)
        counts.update({k: 0 for k in labels if k not in counts})
        if None in counts:
            raise TrainingError(f"{counts[None]} example(s) have no label; a classification round needs a label on each")
        if len(counts) < 2:
            raise TrainingError(f"only one class ({next(iter(counts))!r}): classification needs at least two")
        short = {k: v for k, v in sorted(counts.items()) if v < MIN_EXAMPLES}
        if short:
            listed = _listed([f"{k!r} has {v}" for k, v in short.items()])
            raise TrainingError(
                f"too few examples per class ({listed}); each class needs at least {MIN_EXAMPLES} so the "
                f"model sees it in training and it appears in validation and test: label more of these, "
                f"or drop the class")
    else:
        labelled = sum(1 for e in examples if e.boxes)
        if labelled == 0:
            raise TrainingError("no example has a box: a detection round needs annotated objects")
        boxes = Counter(b.label for e in examples for b in e.boxes)
        boxes.update({k: 0 for k in labels if k not in boxes})
        short = {k: v for k, v in sorted(boxes.items()) if v < MIN_EXAMPLES}
        if short:
            listed = _listed([f"{k!r} has {v} box{'es' if v != 1 else ''}" for k, v in short.items()])
            raise TrainingError(
                f"too few objects per class ({listed}); each class needs at least {MIN_EXAMPLES} boxes so the "
                f"model sees it in training and it appears in validation and test: draw more of these, "
                f"or drop the class")
