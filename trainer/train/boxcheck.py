"""Box-quality checks for detection datasets: pure functions, boxes in, counts and warnings out.

A box a few pixels across, one covering the whole frame, one with no area or
reaching outside its image is usually an annotation slip; training on it
quietly (or having augmentation drop it quietly) hides the slip. These
checks name them, with a few example ids each, for the dataset page and the
round report. No thread, no I/O and no torch here: the store calls
``check_boxes`` on rows it reads; ``round_warnings`` reads the counts the
augmentation pipeline kept (``trainer.train.augment.dropped_boxes``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

TINY_PX = 4  # narrower or shorter than this in its own image: hard to see, likely a slip
WHOLE_FRAME = 0.9  # covering this share of the image area or more: "the image", not an object
EXAMPLES_KEPT = 5  # example ids named per issue


def _corners(b) -> tuple[float, float, float, float]:
    if isinstance(b, dict):
        return b["x1"], b["y1"], b["x2"], b["y2"]
    return b.x1, b.y1, b.x2, b.y2


def _degenerate(c, w, h) -> bool:
    return not all(math.isfinite(v) for v in c) or c[2] <= c[0] or c[3] <= c[1]


def _out_of_frame(c, w, h) -> bool:
    return any(v < 0.0 or v > 1.0 for v in c)


def _tiny(c, w, h) -> bool:
    return bool(w and h) and min((c[2] - c[0]) * w, (c[3] - c[1]) * h) < TINY_PX


def _whole_frame(c, w, h) -> bool:
    return (min(c[2], 1.0) - max(c[0], 0.0)) * (min(c[3], 1.0) - max(c[1], 0.0)) >= WHOLE_FRAME


# name -> (test on normalized corners and the image's pixel size, what it means). Checked in this order;
# a box counts under the first issue it has (a degenerate box is not also "tiny").
CHECKS: dict[str, tuple[Callable[..., bool], str]] = {
    "degenerate": (_degenerate, "have no area (x2 <= x1 or y2 <= y1) or are not numbers"),
    "out_of_frame": (_out_of_frame, "reach outside their image"),
    "tiny": (_tiny, f"are under {TINY_PX} px wide or high in their image"),
    "whole_frame": (_whole_frame, f"cover {WHOLE_FRAME:.0%} or more of their image"),
}


@dataclass
class BoxQuality:
    boxes: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # issue -> boxes
    examples: dict[str, list[str]] = field(default_factory=dict)  # issue -> the first example ids

    def add(self, issue: str, example_id: str) -> None:
        self.counts[issue] = self.counts.get(issue, 0) + 1
        ids = self.examples.setdefault(issue, [])
        if len(ids) < EXAMPLES_KEPT and example_id not in ids:
            ids.append(example_id)

    def to_dict(self) -> dict:
        return {"boxes": self.boxes, "counts": dict(self.counts), "examples": {k: list(v) for k, v in
                                                                               self.examples.items()}}


def check_boxes(items: Iterable[tuple[str, Sequence, int, int]]) -> BoxQuality:
    """``items``: (example id, boxes with x1..y2 normalized, image width px, height px; 0 when unknown)."""
    q = BoxQuality()
    for example_id, boxes, w, h in items:
        for b in boxes:
            q.boxes += 1
            c = _corners(b)
            issue = next((name for name, (test, _) in CHECKS.items() if test(c, w, h)), None)
            if issue:
                q.add(issue, str(example_id))
    return q


def warnings(q: BoxQuality) -> list[str]:
    """One line per issue found, with the example ids to look at."""
    out = []
    for name, (_, meaning) in CHECKS.items():
        n = q.counts.get(name, 0)
        if n:
            ids = ", ".join(q.examples.get(name, []))
            out.append(f"{n} of {q.boxes} boxes {meaning} (e.g. example {ids}): check these labels")
    return out


def augmentation_warnings(name: str, counts: dict | None) -> list[str]:
    """A line for boxes a transform pipeline dropped: ``counts`` as ``augment.dropped_boxes`` gives them."""
    if not counts or not counts.get("dropped"):
        return []
    return [f"{name}: {counts['dropped']} of {counts['seen']} boxes drawn were dropped "
            f"({counts['too_small']} under {counts['min_size']} px at the input size, "
            f"{counts['outside']} moved outside the image)"]


def round_warnings(examples: Sequence, task: str, input_size: int, loaders: dict) -> dict:
    """The round report's ``warnings`` and ``box_checks``: dataset checks, boxes too small for the input
    size, and what augmentation dropped.

    ``loaders``: {"train": DataLoader | None, "val": ..., "test": ...} of ``trainer.train.data.ExampleDataset``.
    """
    if task != "detection":
        return {"warnings": []}
    from trainer.train.augment import MIN_BOX_PX, dropped_boxes

    q = check_boxes((e.id, e.boxes, int(e.meta.get("width") or 0), int(e.meta.get("height") or 0))
                    for e in examples)
    lines = warnings(q)
    vanish = sum(1 for e in examples for b in e.boxes
                 if not _degenerate(_corners(b), 0, 0)
                 and min(b.x2 - b.x1, b.y2 - b.y1) * input_size < MIN_BOX_PX)
    if vanish:
        lines.append(f"{vanish} boxes are under {MIN_BOX_PX} px at the {input_size} px input size: they are left "
                     f"out of training and evaluation; raise input_size or drop them")
    augmentation = {}
    by_transform: dict[int, list[str]] = {}  # val and test share one evaluation pipeline
    for split, loader in loaders.items():
        if loader is not None:
            by_transform.setdefault(id(loader.dataset.transform), []).append(split)
    for split, loader in loaders.items():
        splits = by_transform.get(id(loader.dataset.transform)) if loader is not None else None
        if not splits or splits[0] != split:
            continue
        counts = dropped_boxes(loader.dataset.transform)
        if counts is not None:
            name = "+".join(splits)
            augmentation[name] = counts
            lines += augmentation_warnings(f"{name} pipeline", counts)
    return {"warnings": lines, "box_checks": {"dataset": q.to_dict(), "too_small_for_input": vanish,
                                              "augmentation": augmentation}}
