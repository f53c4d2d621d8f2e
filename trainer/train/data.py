"""From ``Example`` records to batches: decode once, augment per image, collate.

Images are decoded and resized (stretched, as the model card's ``resize``
says) once per round and kept as uint8 tensors, so an epoch costs only
augmentation. Normalization happens on the whole batch on the device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from trainer.dataset import Example
from trainer.train.errors import TrainingError


def labels_of(examples: Sequence[Example], task: str) -> list[str]:
    if task == "classification":
        return sorted({e.label for e in examples if e.label is not None})
    return sorted({b.label for e in examples for b in e.boxes})


def infer_task(examples: Sequence[Example]) -> str:
    return "classification" if any(e.label is not None for e in examples) else "detection"


def load_image(path, size: int) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise TrainingError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ExampleDataset(Dataset):
    """Classification items are ``(image, class_index)``; detection items ``(image, target)``
    with boxes in input pixels and 1-based labels (0 is background)."""

    def __init__(self, examples: Sequence[Example], labels: Sequence[str], task: str, input_size: int,
                 transform: v2.Transform, cache: bool = True):
        self.examples = list(examples)
        self.index = {name: i for i, name in enumerate(labels)}
        self.task = task
        self.size = input_size
        self.transform = transform
        self.per_image_augment = True  # the loop fetches such batches single-threaded
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.examples)

    def image(self, i: int) -> torch.Tensor:
        if self._cache is None:
            return load_image(self.examples[i].image_path, self.size)
        if i not in self._cache:
            self._cache[i] = load_image(self.examples[i].image_path, self.size)
        return self._cache[i]

    def preload(self) -> None:
        if self._cache is not None:
            for i in range(len(self.examples)):
                self.image(i)

    def __getitem__(self, i: int):
        ex = self.examples[i]
        img = tv_tensors.Image(self.image(i))
        if self.task == "classification":
            return self.transform(img), self.index[ex.label]
        s = float(self.size)
        boxes = torch.tensor([[b.x1 * s, b.y1 * s, b.x2 * s, b.y2 * s] for b in ex.boxes],
                             dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(self.size, self.size)),
                  "labels": torch.tensor([self.index[b.label] + 1 for b in ex.boxes], dtype=torch.int64)}
        img, target = self.transform(img, target)
        return img, {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]}


def collate(task: str):
    def classification(batch):
        images, labels = zip(*batch)
        return torch.stack([i.as_subclass(torch.Tensor) for i in images]), torch.tensor(labels)

    def detection(batch):
        images, targets = zip(*batch)
        return torch.stack([i.as_subclass(torch.Tensor) for i in images]), list(targets)
    return classification if task == "classification" else detection


def class_counts(examples: Sequence[Example], task: str) -> Counter:
    if task == "classification":
        return Counter(e.label for e in examples)
    return Counter(b.label for e in examples for b in e.boxes)


def sample_weights(examples: Sequence[Example], task: str, balance: bool, current_round: int,
                   new_weight: float, new_share_max: float = 1.0) -> list[float]:
    """Per-example sampling weight: rarer classes up (if ``balance``), this round's examples up.

    Oversampling what is new is what lets 30-50 corrected examples move a model
    trained on hundreds, while the old examples keep being seen. But on a small
    dataset the same factor lets the new batch dominate (40 new on 100 old at
    3x are 55 % of the draws) and the round forgets what it knew, so the new
    examples' share of the draws is capped at ``new_share_max`` (never below
    their natural share: the factor does not go under 1). Generated
    (synthetic) examples are never "new": the corrections are what matters.
    """
    counts = class_counts(examples, task)
    base, new = [], []
    for e in examples:
        w = 1.0
        if balance and counts:
            if task == "classification":
                w = max(counts.values()) / counts[e.label]
            elif e.boxes:
                w = max(max(counts.values()) / counts[b.label] for b in e.boxes)
        base.append(w)
        new.append(e.round_added == current_round and current_round > 0 and e.source != "synthetic")
    new_mass = sum(w for w, n in zip(base, new) if n)
    old_mass = sum(base) - new_mass
    factor = new_weight
    if new_mass > 0 and old_mass > 0 and new_share_max < 1.0:
        # the factor f at which f * new / (f * new + old) == new_share_max
        factor = max(1.0, min(new_weight, new_share_max * old_mass / ((1.0 - new_share_max) * new_mass)))
    return [w * factor if n else w for w, n in zip(base, new)]
