"""The dataset records the store, the formats, the trainer and replay share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")
SOURCES = ("edge", "import", "synthetic")


@dataclass(frozen=True)
class LabeledBox:
    """A ground-truth box in normalized [0, 1] image coordinates."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str


@dataclass(frozen=True)
class Example:
    """One labelled image.

    ``label`` is set for classification, ``boxes`` for detection (an image with
    no objects is a valid detection example with ``boxes=()``). ``round_added``
    is the training round whose batch it arrived in (0 = initial data), so a
    round can oversample what is new.
    """

    id: str
    image_path: Path
    label: str | None = None
    boxes: tuple[LabeledBox, ...] = ()
    split: str | None = None  # None until the trainer assigns one
    source: str = "import"
    round_added: int = 0
    meta: dict = field(default_factory=dict, compare=False)
