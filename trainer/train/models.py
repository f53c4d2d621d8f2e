"""Models by name: a registry of builders for classification and detection.

Every builder takes ``(num_classes, input_size)`` and returns an ``nn.Module``.
Detection models follow torchvision's interface (``model(images, targets)``
gives a loss dict in training, ``model(images)`` a list of dicts) with
1-based labels, 0 being background. Register more under the
``edgeloop.models`` entry-point group (the object is a ``ModelSpec``) or name
a ``module:function`` path returning one.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn

from trainer.train.errors import TrainingError

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "edgeloop.models"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model and what its exported graph looks like.

    ``kind``: ``logits`` (classification, [B, C] logits), ``dense`` (a
    detector with a ``dense()`` method: normalized boxes and sigmoid scores)
    or ``torchvision_det`` (torchvision detector: filtered boxes, scores,
    labels in input pixels, batch of one). ``mean``/``std`` are applied to
    [0, 1] pixels before the model; torchvision detectors normalize inside.
    """

    name: str
    task: Literal["classification", "detection"]
    build: Callable[[int, int], nn.Module]
    default_input_size: int
    kind: Literal["logits", "dense", "torchvision_det"]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class SmallCNN(nn.Module):
    """Four conv blocks and a linear head: enough for 32-96 px inputs, fast on CPU."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in (width, 2 * width, 4 * width, 8 * width):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _torchvision_cls(name: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, input_size: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return build


def _torchvision_det(name: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, input_size: int) -> nn.Module:
        import torchvision

        kwargs: dict = {"weights": None, "weights_backbone": None, "num_classes": num_classes + 1}
        if name.startswith("fasterrcnn"):
            kwargs.update(min_size=input_size, max_size=input_size)
        return torchvision.models.get_model(name, **kwargs)
    return build


def _tiny_det(num_classes: int, input_size: int) -> nn.Module:
    from trainer.train.tinydet import TinyDet

    return TinyDet(num_classes)


BUILTIN: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("small_cnn", "classification", lambda c, _s: SmallCNN(c), 64, "logits", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    ModelSpec("mobilenet_v3_small", "classification", _torchvision_cls("mobilenet_v3_small"), 224, "logits"),
    ModelSpec("mobilenet_v3_large", "classification", _torchvision_cls("mobilenet_v3_large"), 224, "logits"),
    ModelSpec("resnet18", "classification", _torchvision_cls("resnet18"), 224, "logits"),
    ModelSpec("efficientnet_b0", "classification", _torchvision_cls("efficientnet_b0"), 224, "logits"),
    ModelSpec("tiny_det", "detection", _tiny_det, 128, "dense", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    ModelSpec("ssdlite320_mobilenet_v3_large", "detection", _torchvision_det("ssdlite320_mobilenet_v3_large"),
              320, "torchvision_det", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    ModelSpec("fasterrcnn_mobilenet_v3_large_320_fpn", "detection",
              _torchvision_det("fasterrcnn_mobilenet_v3_large_320_fpn"), 320, "torchvision_det",
              (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
]}


def available_models(task: str | None = None) -> list[str]:
    names = {n for n, s in BUILTIN.items() if task is None or s.task == task}
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_spec(name: str) -> ModelSpec:
    """A model spec by built-in name, entry-point name or ``module:function`` path."""
    if name in BUILTIN:
        return BUILTIN[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return _check_spec(name, ep.load())
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise TrainingError(f"cannot load model {name!r}: {e}") from e
        return _check_spec(name, obj() if callable(obj) and not isinstance(obj, ModelSpec) else obj)
    raise TrainingError(f"unknown model {name!r}; available: {', '.join(available_models())}")


def _check_spec(name: str, obj: object) -> ModelSpec:
    if not isinstance(obj, ModelSpec):
        raise TrainingError(f"model {name!r} must be a trainer.train.models.ModelSpec, got {type(obj).__name__}")
    return obj


def build_model(spec: ModelSpec, num_classes: int, input_size: int, weights: str | None = None) -> nn.Module:
    model = spec.build(num_classes, input_size)
    if weights:
        load_pretrained(model, weights)
    return model


def load_pretrained(model: nn.Module, weights: str) -> None:
    """Load a local state dict or a torchvision weights name, skipping shape mismatches (the head)."""
    if Path(weights).exists():
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
    else:
        import torchvision

        try:
            state = torchvision.models.get_weight(weights).get_state_dict(progress=False)
        except (ValueError, KeyError) as e:
            raise TrainingError(f"weights {weights!r} is neither a file nor a torchvision weights name") from e
        except OSError as e:
            raise TrainingError(f"cannot download {weights!r} (no internet?): {e}; pass a local .pt file") from e
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = len(own) - len(usable)
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d tensors from %s (%d left at their initial values, e.g. the new head)", len(usable), weights, skipped)
