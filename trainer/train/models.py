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
import pickle
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Literal

import numpy as np
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
    ``embedding`` says where the exported embedding comes from: ``(module
    name, "input" | "output")`` (see ``embedding_of``), or None for none.
    """

    name: str
    task: Literal["classification", "detection"]
    build: Callable[[int, int], nn.Module]
    default_input_size: int
    kind: Literal["logits", "dense", "torchvision_det"]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    embedding: tuple[str, Literal["input", "output"]] | None = None


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
    ModelSpec("small_cnn", "classification", lambda c, _s: SmallCNN(c), 64, "logits", (0.5, 0.5, 0.5),
              (0.25, 0.25, 0.25), embedding=("head", "input")),
    ModelSpec("mobilenet_v2", "classification", _torchvision_cls("mobilenet_v2"), 224, "logits",
              embedding=("classifier", "input")),
    ModelSpec("mobilenet_v3_small", "classification", _torchvision_cls("mobilenet_v3_small"), 224, "logits",
              embedding=("classifier", "input")),
    ModelSpec("mobilenet_v3_large", "classification", _torchvision_cls("mobilenet_v3_large"), 224, "logits",
              embedding=("classifier", "input")),
    ModelSpec("resnet18", "classification", _torchvision_cls("resnet18"), 224, "logits", embedding=("fc", "input")),
    ModelSpec("efficientnet_b0", "classification", _torchvision_cls("efficientnet_b0"), 224, "logits",
              embedding=("classifier", "input")),
    ModelSpec("tiny_det", "detection", _tiny_det, 128, "dense", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
              embedding=("backbone", "output")),
    ModelSpec("ssdlite320_mobilenet_v3_large", "detection", _torchvision_det("ssdlite320_mobilenet_v3_large"),
              320, "torchvision_det", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), embedding=("backbone", "output")),
    ModelSpec("fasterrcnn_mobilenet_v3_large_320_fpn", "detection",
              _torchvision_det("fasterrcnn_mobilenet_v3_large_320_fpn"), 320, "torchvision_det",
              (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), embedding=("backbone", "output")),
]}
EMBEDDING_DIM = 128  # wider pooled features are projected down to this many dimensions


class EmbeddingTap:
    """Captures a module's input or output during a forward pass and makes it a compact embedding.

    Used by the export wrappers: the model runs once, as it would anyway,
    and the tapped features become a second output, so an embedding costs
    no second pass through the backbone. Feature maps are globally
    average-pooled (for a dict of maps, e.g. an FPN, the last, coarsest one);
    more than ``EMBEDDING_DIM`` channels are projected down by a fixed random
    Gaussian matrix (seeded, so every export of the same width projects the
    same way; distances survive within a few percent, Johnson-Lindenstrauss);
    the result is L2-normalized, so its components lie in [-1, 1] and
    quantize to int8 without a scale (protocol.embedding).
    """

    def __init__(self, model: nn.Module, where: tuple[str, str]) -> None:
        name, side = where
        try:
            module = model.get_submodule(name)
        except AttributeError as e:
            raise TrainingError(f"the model has no module {name!r} to take an embedding from") from e
        self.captured: torch.Tensor | None = None

        def hook(_module, args, output):
            self.captured = args[0] if side == "input" else output
        self._handle = module.register_forward_hook(hook)

    def remove(self) -> None:
        self._handle.remove()

    def embedding(self) -> torch.Tensor:
        if self.captured is None:
            raise TrainingError("the embedding module did not run in the forward pass")
        return compact_embedding(self.captured)


def compact_embedding(features) -> torch.Tensor:
    """[B, C, H, W] or [B, C] features (or a dict of maps: the last) -> L2-normalized [B, <= EMBEDDING_DIM]."""
    if isinstance(features, dict):
        features = list(features.values())[-1]
    if features.dim() == 4:
        features = features.mean(dim=(2, 3))
    features = features.flatten(1).float()
    width = int(features.shape[1])  # a constant in a traced graph: the model's width never changes
    if width > EMBEDDING_DIM:
        features = features @ projection(width).to(features.device)
    return nn.functional.normalize(features, dim=1)


def projection(width: int) -> torch.Tensor:
    """The fixed [width, EMBEDDING_DIM] random projection for features of ``width`` channels."""
    # numpy, not torch.randn: under the ONNX exporter's tracing this must be a constant, not an op
    m = np.random.default_rng(width).standard_normal((width, EMBEDDING_DIM)).astype(np.float32)
    return torch.from_numpy(m / EMBEDDING_DIM ** 0.5)


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
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise TrainingError(f"cannot load weights {weights}: {str(e)[:300]}") from e
        if isinstance(state, dict):  # a bare state dict, {"model": ...}, or an edgeloop checkpoint
            state = state.get("state_dict", state.get("model", state))
        if not isinstance(state, dict):
            raise TrainingError(f"{weights} holds no state dict")
    else:
        import torchvision

        try:
            state = torchvision.models.get_weight(weights).get_state_dict(progress=False)
        except (ValueError, KeyError) as e:
            raise TrainingError(f"weights {weights!r} is neither a file nor a torchvision weights name") from e
        except OSError as e:
            raise TrainingError(f"cannot download {weights!r} (no internet?): {e}; pass a local .pt file") from e
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and hasattr(v, "shape") and own[k].shape == v.shape}
    if not usable:
        raise TrainingError(f"none of the tensors in {weights} fit this model: weights for another architecture?")
    skipped = len(own) - len(usable)
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d tensors from %s (%d left at their initial values, e.g. the new head)", len(usable), weights, skipped)
