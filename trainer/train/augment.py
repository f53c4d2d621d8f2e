"""Augmentation pipelines built from ``AugmentConfig`` with torchvision.transforms.v2.

Geometric and colour steps run on uint8 images (cheap), noise and occluders
on float. Detection pipelines carry ``tv_tensors.BoundingBoxes`` through
every step and drop boxes that leave the image or shrink under
``MIN_BOX_PX``, counting each (``dropped_boxes``) for the round report; the
counts sit in shared memory, so DataLoader workers add to them too, each
in its own row. Custom steps register under
the ``edgeloop.augmentations`` entry-point group, or by ``module:function``;
either is a factory ``f(task=..., input_size=...) -> transform``.
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points
from typing import Any, Callable

import torch
from torch.utils.data import get_worker_info
from torch.utils._pytree import tree_flatten
from torchvision import tv_tensors
from torchvision.transforms import v2

from trainer.train.config import AugmentConfig
from trainer.train.errors import TrainingError

ENTRY_POINT_GROUP = "edgeloop.augmentations"
MIN_BOX_PX = 2  # narrower boxes (at the input size) carry no signal and upset some detectors' losses
_WORKER_ROWS = 64  # row 0: the main process; row 1 + i: DataLoader worker i


class CountedSanitize(v2.Transform):
    """``SanitizeBoundingBoxes`` that counts what it removes: boxes seen, too small, outside the image."""

    def __init__(self, min_size: float = MIN_BOX_PX):
        super().__init__()
        self.min_size = min_size
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=min_size)
        self.counts = torch.zeros(_WORKER_ROWS, 3, dtype=torch.int64).share_memory_()

    def forward(self, *inputs: Any) -> Any:
        before = [x for x in tree_flatten(inputs)[0] if isinstance(x, tv_tensors.BoundingBoxes)]
        out = self.sanitize(*inputs)
        after = [x for x in tree_flatten(out)[0] if isinstance(x, tv_tensors.BoundingBoxes)]
        seen = sum(len(b) for b in before)
        dropped = seen - sum(len(b) for b in after)
        # After ClampBoundingBoxes a box that left the image has no width or height left.
        outside = sum(int(((b[:, 2:] - b[:, :2]) <= 0).any(1).sum()) for b in before) if dropped else 0
        info = get_worker_info()
        row = 0 if info is None else 1 + info.id % (_WORKER_ROWS - 1)
        self.counts[row] += torch.tensor([seen, dropped - min(outside, dropped), min(outside, dropped)])
        return out


def dropped_boxes(transform: Any) -> dict | None:
    """What the pipeline's CountedSanitize removed so far; None when it has none (classification)."""
    steps = getattr(transform, "transforms", [transform])
    for step in steps:
        if isinstance(step, CountedSanitize):
            seen, small, outside = (int(v) for v in step.counts.sum(0))
            return {"seen": seen, "dropped": small + outside, "too_small": small, "outside": outside,
                    "min_size": step.min_size}
    return None


def build_transform(cfg: AugmentConfig, task: str, input_size: int, train: bool = True) -> v2.Transform:
    """The per-image pipeline: uint8 [3, H, W] (+ target) in, float [0, 1] out."""
    steps: list[v2.Transform] = []
    if train and cfg.enabled:
        steps += _geometric(cfg)
        if max(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) > 0:
            jitter = v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
            steps.append(v2.RandomApply([jitter], p=0.8))
        if cfg.blur > 0:
            steps.append(v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.2))], p=cfg.blur))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if train and cfg.enabled:
        if cfg.noise > 0 and cfg.noise_sigma > 0:
            steps.append(v2.RandomApply([v2.GaussianNoise(sigma=cfg.noise_sigma, clip=True)], p=cfg.noise))
        if cfg.erase > 0:
            # Random-valued patches stand in for occluders and strange elements in the scene.
            steps.append(v2.RandomErasing(p=cfg.erase, scale=(0.02, 0.1), ratio=(0.3, 3.3), value="random"))
        steps += [_custom(name, task, input_size) for name in cfg.custom]
    if task == "detection":
        # Occluders cover pixels, not objects: the boxes pass through RandomErasing unchanged, on purpose.
        warnings.filterwarnings("ignore", message=r"RandomErasing\(\) is currently passing through")
        steps.append(v2.ClampBoundingBoxes())
        steps.append(CountedSanitize(MIN_BOX_PX))
    return v2.Compose(steps)


def _geometric(cfg: AugmentConfig) -> list[v2.Transform]:
    steps: list[v2.Transform] = []
    if cfg.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(cfg.hflip))
    if cfg.vflip > 0:
        steps.append(v2.RandomVerticalFlip(cfg.vflip))
    if cfg.rotate_degrees > 0 or cfg.translate > 0 or cfg.scale != (1.0, 1.0):
        steps.append(v2.RandomAffine(degrees=cfg.rotate_degrees, translate=(cfg.translate, cfg.translate),
                                     scale=cfg.scale))
    if cfg.perspective > 0:
        steps.append(v2.RandomPerspective(distortion_scale=cfg.perspective, p=0.3))
    return steps


def _custom(name: str, task: str, input_size: int) -> v2.Transform:
    factory: Callable[..., Any] | None = None
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            factory = ep.load()
    if factory is None and ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise TrainingError(f"cannot load augmentation {name!r}: {e}") from e
    if factory is None:
        raise TrainingError(f"unknown augmentation {name!r}: register it under the {ENTRY_POINT_GROUP!r} "
                            f"entry-point group or give a module:function path")
    transform = factory(task=task, input_size=input_size)
    if not callable(transform):
        raise TrainingError(f"augmentation {name!r} did not return a callable transform")
    return transform
