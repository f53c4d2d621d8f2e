"""One training round: examples in, a checkpoint, a verified ONNX model and a report out.

``run_round`` is what ``edgeloop train`` and the server's training worker
call. It needs no database: splits come in as ``{example_id: split}`` (or
from the parent checkpoint, which carries them) and go out in the result
for the store to persist. Nothing in ``out_dir`` is replaced until the round
has trained, been evaluated and its export verified, so a failed or
cancelled round leaves the previous model untouched.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from trainer.dataset import Example
from trainer.train import data as D
from trainer.train.augment import build_transform
from trainer.train.batch_augment import BatchAugment
from trainer.train.boxcheck import round_warnings
from trainer.train.checkpoint import (CHECKPOINT_FORMAT, atomic_write_bytes, checkpoint_bytes, code_version,
                                      dataset_version, load_checkpoint)
from trainer.train.config import TrainConfig
from trainer.train.errors import TrainingError
from trainer.train.export import build_card, export_onnx
from trainer.train.loop import EpochStats, FitOptions, FitResult, Normalizer, fit, pick_device, predict
from trainer.train.metrics import classification_metrics, detection_metrics
from trainer.train.models import build_model, get_spec
from trainer.train.report import write_report
from trainer.train.splits import assign_splits, check_minimum, split_counts

log = logging.getLogger(__name__)


@dataclass
class RoundResult:
    round: int
    task: str
    model: str
    labels: list[str]
    splits: dict[str, str]  # every example's split, for the store to persist
    split_counts: dict[str, int]
    metrics: dict  # on the frozen test split
    fit: FitResult
    imbalance: dict
    dataset_version: str
    checkpoint: Path
    onnx: Path | None
    report: dict[str, str] = field(default_factory=dict)
    export_check: dict | None = None
    seconds: float = 0.0

    @property
    def overfit(self) -> bool:
        return self.fit.overfit

    @property
    def stop_reason(self) -> str:
        return self.fit.stop_reason


@dataclass(frozen=True)
class _Plan:
    task: str
    model: str
    input_size: int
    labels: list[str]
    round: int
    parent_state: dict | None


def _plan(examples: Sequence[Example], config: TrainConfig, parent: dict | None, round_index: int | None,
          project_labels: Sequence[str] = ()) -> _Plan:
    task = config.task or (parent["task"] if parent else D.infer_task(examples))
    check_minimum(examples, task, project_labels)
    incremental = parent is not None and not config.full_retrain
    model = parent["model_name"] if incremental else config.model
    if incremental and config.model != model:
        log.warning("incremental round keeps the parent's model %s (config says %s; use --full-retrain to switch)",
                    model, config.model)
    spec = get_spec(model)
    if spec.task != task:
        raise TrainingError(f"model {model!r} is a {spec.task} model but the dataset is {task}")
    size = parent["input_size"] if incremental else (config.input_size or spec.default_input_size)
    labels = D.labels_of(examples, task)
    if incremental:  # keep the parent's class order so its head still means the same thing
        labels = list(parent["labels"]) + [x for x in labels if x not in parent["labels"]]
    index = round_index if round_index is not None else (parent["round"] + 1 if parent else 0)
    return _Plan(task, model, size, labels, index, parent["state_dict"] if incremental else None)


def _loaders(examples, splits, plan: _Plan, config: TrainConfig, generator: torch.Generator):
    by_split = {s: [e for e in examples if splits[e.id] == s] for s in ("train", "val", "test")}
    aug = config.augment
    batched = plan.task == "classification" and aug.enabled and aug.batched and not aug.custom
    eval_tf = build_transform(aug, plan.task, plan.input_size, train=False)
    train_tf = eval_tf if batched else build_transform(aug, plan.task, plan.input_size, train=True)
    batch_aug = BatchAugment(aug, seed=config.seed + plan.round) if batched else None

    def make(split, transform):
        return D.ExampleDataset(by_split[split], plan.labels, plan.task, plan.input_size, transform,
                                cache=config.cache_images)
    train_ds = make("train", train_tf)
    train_ds.per_image_augment = aug.enabled and not batched
    weights = D.sample_weights(train_ds.examples, plan.task, config.balance == "sampler" or
                               (config.balance == "loss" and plan.task == "detection"), plan.round, config.new_weight,
                               config.new_share_max)
    per_epoch = samples_per_epoch(len(weights), config.batch_size, config.epochs, config.min_steps)
    if len(set(weights)) > 1:
        sampler = WeightedRandomSampler(weights, num_samples=per_epoch, replacement=True, generator=generator)
    elif per_epoch > len(weights):
        sampler = RandomSampler(train_ds, replacement=True, num_samples=per_epoch, generator=generator)
    else:
        sampler = RandomSampler(train_ds, generator=generator)
    workers = config.num_workers
    if workers == "auto":  # a daemonic process (the server's round worker) may not start children
        per_image_work = not batched and aug.enabled
        workers = 1 if per_image_work and (os.cpu_count() or 1) >= 2 and not mp.current_process().daemon else 0
    train_ds.preload()  # decode once here so forked workers share the decoded images
    common = {"batch_size": config.batch_size, "collate_fn": D.collate(plan.task)}
    train = DataLoader(train_ds, sampler=sampler, drop_last=len(sampler) > config.batch_size,
                       num_workers=workers, persistent_workers=workers > 0, **common)
    val = DataLoader(make("val", eval_tf), **common) if by_split["val"] else None
    test = DataLoader(make("test", eval_tf), **common) if by_split["test"] else None
    return train, val, test, by_split, batch_aug


def samples_per_epoch(n: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """Images drawn per epoch: the training set, or more when ``epochs`` passes over it would
    take fewer than ``min_steps`` optimizer steps (then a whole number of full batches)."""
    natural = n // batch_size if n > batch_size else 1  # full batches only, as drop_last does
    if n == 0 or natural * epochs >= min_steps:
        return n
    return -(-min_steps // epochs) * batch_size


def _imbalance(train_examples, plan: _Plan, config: TrainConfig) -> tuple[dict, torch.Tensor | None]:
    counts = D.class_counts(train_examples, plan.task)
    present = [counts.get(x, 0) for x in plan.labels]
    ratio = max(present) / max(1, min(present)) if present else 1.0
    method = config.balance if not (config.balance == "loss" and plan.task == "detection") else "sampler"
    class_weights = None
    if method == "loss":
        total = sum(present)
        class_weights = torch.tensor([total / (len(present) * max(1, c)) for c in present], dtype=torch.float32)
    new = sum(1 for e in train_examples if e.round_added == plan.round and plan.round > 0)
    report = {"train_counts": dict(sorted(counts.items())), "ratio": round(ratio, 3), "method": method,
              "new_examples_in_train": new, "new_weight": config.new_weight if new else 1.0}
    if ratio > 1.5 and method == "none":
        log.warning("class imbalance %.1f:1 in train and balancing is off", ratio)
    return report, class_weights


def _test_metrics(model, loader, plan: _Plan, norm: Normalizer) -> dict:
    if loader is None:
        return {}
    preds, truths = predict(model, loader, plan.task, norm)
    if plan.task == "classification":
        return classification_metrics(truths, preds, plan.labels)
    return detection_metrics(preds, truths, plan.labels)


def _val_metric(loader, plan: _Plan, norm: Normalizer):
    """(name, fn) measuring the validation split each epoch: accuracy, or mAP@0.5 for detection."""
    if loader is None:
        return None
    name = "accuracy" if plan.task == "classification" else "map_50"

    def measure(model) -> float | None:
        was_training = model.training
        try:
            value = _test_metrics(model, loader, plan, norm).get(name)
            return None if value is None else float(value)
        finally:
            model.train(was_training)
    return name, measure


def _card_metrics(task: str, test: dict) -> dict[str, float]:
    if not test:
        return {}
    if task == "classification":
        return {"accuracy": test["accuracy"]}
    return {"map": test["map"], "map_50": test["map_50"]}


def run_round(examples: Sequence[Example], config: TrainConfig, out_dir: str | Path, *,
              parent: str | Path | None = None, existing_splits: Mapping[str, str] | None = None,
              round_index: int | None = None, name: str = "model", version: int | None = None,
              on_epoch: Callable[[EpochStats], None] | None = None,
              should_cancel: Callable[[], bool] | None = None, project_labels: Sequence[str] = ()) -> RoundResult:
    """Train one round and write ``model.pt``, ``model.onnx`` and the report into ``out_dir``.

    ``project_labels``: the project's classes, so one with no labelled example is named as short."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    parent_ckpt = load_checkpoint(parent) if parent else None
    plan = _plan(examples, config, parent_ckpt, round_index, project_labels)
    ids = {e.id for e in examples}
    existing = {k: v for k, v in (parent_ckpt or {}).get("splits", {}).items() if k in ids}
    existing.update(existing_splits or {})
    splits = assign_splits(examples, existing, config.seed, config.splits.ratios, config.splits.caps)
    examples = [replace(e, split=splits[e.id]) for e in examples]
    torch.manual_seed(config.seed + plan.round)
    generator = torch.Generator().manual_seed(config.seed + plan.round)
    spec = get_spec(plan.model)
    model = build_model(spec, len(plan.labels), plan.input_size, None if plan.parent_state else config.weights)
    if plan.parent_state is not None:
        _load_parent(model, plan.parent_state)
    train, val, test, by_split, batch_aug = _loaders(examples, splits, plan, config, generator)
    imbalance, class_weights = _imbalance(by_split["train"], plan, config)
    device = pick_device(config.device)
    norm = Normalizer(spec.mean, spec.std, device)
    lr = config.lr * (config.incremental_lr_scale if plan.parent_state is not None else 1.0)
    opts = FitOptions(config.epochs, lr, config.weight_decay, config.patience, config.overfit_epochs,
                      config.min_delta, config.amp, config.overfit_margin, min_epochs=config.min_epochs,
                      min_steps=config.min_steps, early_stop_on=config.early_stop_on,
                      ema_decay=config.ema_decay)
    log.info("round %d: %s on %s, %s, imbalance %s", plan.round, plan.model, device,
             split_counts(examples, splits), imbalance)
    result, best = fit(model, train, val, plan.task, opts, device, norm, class_weights, on_epoch, should_cancel,
                       batch_aug, val_metric=_val_metric(val, plan, norm))
    model.load_state_dict(best)
    test_metrics = _test_metrics(model, test, plan, norm)
    record = _record(examples, config, plan, splits, result, test_metrics, imbalance)
    record.update(round_warnings(examples, plan.task, plan.input_size, {"train": train, "val": val, "test": test}))
    ckpt = {"format": CHECKPOINT_FORMAT, "model_name": plan.model, "task": plan.task, "labels": plan.labels,
            "input_size": plan.input_size, "mean": spec.mean, "std": spec.std, "round": plan.round,
            "version": version if version is not None else plan.round, "splits": splits,
            "state_dict": best, "record": record}
    onnx_path, check = None, None
    if config.export.enabled:
        onnx_path, check = _export(model, spec, plan, config, name, ckpt["version"], test_metrics, record,
                                   test or val or train, out_dir)
        record["export"] = check
    atomic_write_bytes(out_dir / "model.pt", checkpoint_bytes(ckpt))
    report = write_report(out_dir, record)
    return RoundResult(plan.round, plan.task, plan.model, plan.labels, splits, split_counts(examples, splits),
                       test_metrics, result, imbalance, record["dataset_version"], out_dir / "model.pt", onnx_path,
                       report, check, time.perf_counter() - t0)


def _load_parent(model: torch.nn.Module, state: dict) -> None:
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own):
        log.warning("parent checkpoint: %d of %d tensors reused (new classes re-initialize the head)",
                    len(usable), len(own))
    model.load_state_dict(usable, strict=False)


def _record(examples, config, plan: _Plan, splits, result: FitResult, test_metrics: dict, imbalance: dict) -> dict:
    """What makes a round reproducible and comparable: config, seed, data, code, metrics."""
    return {"round": plan.round, "task": plan.task, "model": plan.model, "input_size": plan.input_size,
            "labels": plan.labels, "config": config.model_dump(mode="json"), "seed": config.seed,
            "dataset_version": dataset_version(examples), "code_version": code_version(),
            "split_counts": split_counts(examples, splits), "incremental": plan.parent_state is not None,
            "fit": result.to_dict(), "imbalance": imbalance, "metrics": {"test": test_metrics},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _export(model, spec, plan: _Plan, config: TrainConfig, name: str, version: int, test_metrics: dict,
            record: dict, loader, out_dir: Path):
    ds = loader.dataset
    n = min(len(ds), config.export.verify_images)
    sample = torch.stack([ds[i][0].as_subclass(torch.Tensor) for i in range(n)])
    sample = Normalizer(spec.mean, spec.std, torch.device("cpu"))(sample)
    training = {k: record[k] for k in ("round", "dataset_version", "seed", "code_version", "model", "split_counts")}
    card = build_card(spec, name, version, plan.labels, plan.input_size, config.export.score_threshold,
                      _card_metrics(plan.task, test_metrics), training)
    path = out_dir / "model.onnx"
    check = export_onnx(model, spec, card, path, sample, config.export.opset, config.export.atol, config.export.rtol)
    return path, check
