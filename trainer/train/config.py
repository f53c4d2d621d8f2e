"""Typed training configuration, validated when a round starts.

Every model forbids unknown keys so a typo in a project's config file fails
at once with the key's path instead of being ignored. Load with
``load_config(path)`` (JSON or TOML) or build ``TrainConfig(**dict)``.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainer.train.errors import TrainingError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AugmentConfig(_Strict):
    """Realistic defaults: what a fixed camera plausibly sees. Probabilities are per image."""

    enabled: bool = True
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.0, ge=0, le=1)  # off: most scenes have an up (cars are never upside down)
    rotate_degrees: float = Field(10.0, ge=0, le=180)
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = Field(0.08, ge=0, le=0.5)
    perspective: float = Field(0.15, ge=0, le=1)  # distortion scale; applied with p=0.3
    brightness: float = Field(0.25, ge=0, le=1)
    contrast: float = Field(0.25, ge=0, le=1)
    saturation: float = Field(0.25, ge=0, le=1)
    hue: float = Field(0.03, ge=0, le=0.5)
    blur: float = Field(0.15, ge=0, le=1)  # probability of a small Gaussian blur
    noise: float = Field(0.15, ge=0, le=1)  # probability of Gaussian pixel noise
    noise_sigma: float = Field(0.03, ge=0, le=0.5)
    erase: float = Field(0.25, ge=0, le=1)  # probability of a random occluder
    custom: tuple[str, ...] = ()  # entry-point names or "module:function" factories
    # Classification without custom steps: augment whole batches on the device
    # (trainer.train.batch_augment), far cheaper than per-image transforms.
    batched: bool = True

    @model_validator(mode="after")
    def _scale_order(self) -> "AugmentConfig":
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError("scale must be (low, high) with 0 < low <= high")
        return self


class SplitConfig(_Strict):
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    caps: tuple[int | None, int | None, int | None] = (None, 100, 100)

    @model_validator(mode="after")
    def _sum(self) -> "SplitConfig":
        if abs(sum(self.ratios) - 1.0) > 1e-6 or min(self.ratios) < 0:
            raise ValueError("ratios must be three non-negative numbers summing to 1")
        return self


class ExportConfig(_Strict):
    enabled: bool = True
    opset: int = Field(17, ge=11, le=23)
    atol: float = Field(1e-3, gt=0)
    rtol: float = Field(1e-3, ge=0)
    verify_images: int = Field(8, ge=1, le=256)
    score_threshold: float = Field(0.3, ge=0, le=1)  # written into the card for detection


class TrainConfig(_Strict):
    task: Literal["classification", "detection"] | None = None  # None: inferred from the examples
    model: str = "small_cnn"
    input_size: int | None = Field(None, ge=16, le=2048)  # None: the model's default
    weights: str | None = None  # a local .pt state dict, or a torchvision weights name
    epochs: int = Field(30, ge=1, le=10000)
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    patience: int = Field(6, ge=1)  # early stop after this many epochs without a better val loss (or metric)
    # A floor on optimizer steps per round: on a small training set each epoch draws more batches
    # (with replacement) so that 20 labels get as many updates as 300 would. 0 turns it off.
    min_steps: int = Field(200, ge=0, le=1_000_000)
    # Early stopping and the overfitting stop only act after this many epochs and after min_steps.
    min_epochs: int = Field(5, ge=0, le=10000)
    # What early stopping and the kept epoch follow: the validation loss, or the validation split's
    # accuracy (classification) / mAP@0.5 (detection), ties broken by the loss.
    early_stop_on: Literal["val_loss", "val_metric"] = "val_loss"
    overfit_epochs: int = Field(4, ge=2)  # N epochs of train loss down while val loss up
    overfit_margin: float = Field(0.1, ge=0)  # ...ending this much (relative) above the best val loss
    min_delta: float = Field(1e-4, ge=0)
    full_retrain: bool = False
    # Peak learning rate of an incremental round, as a share of lr (1: the same as a first round).
    incremental_lr_scale: float = Field(1.0, gt=0, le=1)
    # Evaluate, keep and export a moving average of the weights (decay per step; 0 turns it off).
    ema_decay: float = Field(0.0, ge=0, lt=1)
    new_weight: float = Field(3.0, ge=1.0)  # sampling weight of examples added this round
    new_share_max: float = Field(0.25, gt=0, le=1)  # ...but at most this share of the draws (1: no cap)
    balance: Literal["sampler", "loss", "none"] = "sampler"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # only used on CUDA
    # Augmentation runs in worker processes so it overlaps the model's compute;
    # "auto" is one worker when there are two or more cores.
    num_workers: int | Literal["auto"] = "auto"
    cache_images: bool = True  # decode and resize each image once per round
    splits: SplitConfig = SplitConfig()
    augment: AugmentConfig = AugmentConfig()
    export: ExportConfig = ExportConfig()


def load_config(path: str | Path | None, **overrides: object) -> TrainConfig:
    """Read a JSON/TOML config file (or none) and apply non-None overrides on top."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as e:
            raise TrainingError(f"{path}: cannot parse config: {e}") from e
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(config)"
        raise TrainingError(f"bad training config at {where}: {err['msg']}") from e
