"""The training loop: flat and readable (nanoGPT style).

``fit`` trains a model on a loader, measures val loss and the validation
metric (accuracy or mAP@0.5, through a callback) every epoch, keeps the best
weights, stops early when the watched figure (val loss, or the metric) stops
improving, never before ``min_epochs`` epochs and ``min_steps`` optimizer
steps, and reports overfitting (train loss falling while val loss rises for N
epochs in a row).
Progress goes to a callback, cancellation comes from another; both are
checked inside the loop so a server can show live curves and stop a round.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from trainer.train.errors import RoundCancelled, TrainingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    val_loss: float | None
    lr: float
    seconds: float
    images: int
    val_metric: float | None = None  # accuracy (classification) or mAP@0.5 (detection) on validation
    steps: int = 0  # optimizer steps so far, this epoch included
    metric_name: str | None = None  # "accuracy" or "map_50": what val_metric is


@dataclass
class FitResult:
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    best_val_metric: float | None = None
    metric_name: str | None = None  # the name of EpochStats.val_metric
    watched: str = "val_loss"  # what chose the kept epoch: val_loss, val_metric or train_loss
    steps: int = 0
    stop_reason: str = "completed"  # completed | early_stopping | overfitting
    overfit: bool = False
    overfit_epoch: int | None = None
    train_images_per_s: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["best_val_loss"] = None if math.isinf(self.best_val_loss) else self.best_val_loss
        return d


@dataclass(frozen=True)
class FitOptions:
    epochs: int
    lr: float
    weight_decay: float
    patience: int
    overfit_epochs: int
    min_delta: float
    amp: bool
    overfit_margin: float = 0.1
    warmup_steps: int = 20
    min_epochs: int = 0
    min_steps: int = 0
    early_stop_on: str = "val_loss"  # or "val_metric"
    ema_decay: float = 0.0  # 0: off; else evaluate, keep and export an exponential moving average of the weights


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging, as YOLOX and Ultralytics train).

    The last iterate of a short, noisy round is one draw around the minimum;
    the average over its last ~``1 / (1 - decay)`` steps is steadier, so
    successive rounds differ by what they learnt rather than by where the last
    batch left them. The decay ramps up from 0 (``decay × (1 - exp(-step /
    ramp))``) so that a round of 200 steps averages its second half, not the
    starting weights. Float buffers (BatchNorm statistics) are averaged too.
    """

    def __init__(self, model: nn.Module, decay: float, ramp: float) -> None:
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, max(1.0, ramp), 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1.0 - math.exp(-self.updates / self.ramp))
        live = model.state_dict()
        for name, avg in self.model.state_dict().items():
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(live[name].detach(), alpha=1.0 - d)
            else:
                avg.copy_(live[name])


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup then cosine decay to a tenth of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


class Normalizer:
    """[0, 1] images -> model input, on the device, for a whole batch at once."""

    def __init__(self, mean, std, device: torch.device):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.device = device

    def __call__(self, images: Tensor) -> Tensor:
        return (images.to(self.device, non_blocking=True) - self.mean) / self.std


def _to_device(targets, device):
    if isinstance(targets, Tensor):
        return targets.to(device, non_blocking=True)
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def compute_loss(model: nn.Module, images: Tensor, targets, task: str, criterion: nn.Module | None) -> Tensor:
    if task == "classification":
        return criterion(model(images), targets)
    return sum(model(images, targets).values())


def _loss_mode(model: nn.Module, training: bool) -> None:
    """Detectors only return losses in train mode; for validation keep BN and dropout frozen."""
    model.train()
    if not training:
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                m.eval()


@torch.no_grad()
def evaluate_loss(model, loader, task, norm: Normalizer, criterion, amp: bool) -> float | None:
    total, n = 0.0, 0
    _loss_mode(model, training=False)
    for images, targets in loader:
        with torch.autocast(norm.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = compute_loss(model, norm(images), _to_device(targets, norm.device), task, criterion)
        total += float(loss) * len(images)
        n += len(images)
    return total / n if n else None


def fit(model: nn.Module, train_loader, val_loader, task: str, opts: FitOptions, device: torch.device,
        norm: Normalizer, class_weights: Tensor | None = None,
        on_epoch: Callable[[EpochStats], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        batch_augment: Callable[[Tensor], Tensor] | None = None,
        val_metric: tuple[str, Callable[[nn.Module], float | None]] | None = None) -> tuple[FitResult, dict]:
    """Train and return the result and the best weights (a state dict on the CPU).

    ``batch_augment`` runs on each training batch on the device, before normalization.
    ``val_metric`` is ``(name, fn)``: ``fn(model)`` measures the validation split after each epoch.
    """
    amp = opts.amp and device.type == "cuda"
    model.to(device)
    criterion = nn.CrossEntropyLoss(weight=None if class_weights is None else class_weights.to(device))
    val_criterion = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    total_steps = opts.epochs * max(1, len(train_loader))
    result, tracker = FitResult(metric_name=val_metric[0] if val_metric else None), _Best(opts)
    state, best_state = {"step": 0, "train_time": 0.0, "train_images": 0}, None
    # The ramp spreads the average over about the last half of the round's planned steps.
    state["ema"] = WeightAverage(model, opts.ema_decay, total_steps / 10) if opts.ema_decay > 0 else None
    kept = state["ema"].model if state["ema"] is not None else model  # what is evaluated, kept and exported
    for epoch in range(opts.epochs):
        t0 = time.perf_counter()
        loss, seen, lr = _train_epoch(model, train_loader, task, opts, device, norm, criterion, optimizer, params,
                                      state, total_steps, epoch, amp, should_cancel, batch_augment)
        state["train_time"] += time.perf_counter() - t0
        state["train_images"] += seen
        val_loss = evaluate_loss(kept, val_loader, task, norm, val_criterion, amp) if val_loader else None
        metric = val_metric[1](kept) if val_metric is not None and val_loader is not None else None
        stats = EpochStats(epoch, loss, val_loss, lr, time.perf_counter() - t0, seen, metric, state["step"],
                           result.metric_name)
        if not math.isfinite(stats.loss):
            raise TrainingError(f"the training loss became {stats.loss} in epoch {epoch + 1}: lower the learning "
                                f"rate (now {opts.lr}) or check the labels")
        result.history.append(stats)
        log.info("epoch %d/%d: loss %.4f, val loss %s%s, %.1f s", epoch + 1, opts.epochs, stats.loss,
                 "-" if val_loss is None else f"{val_loss:.4f}",
                 "" if metric is None else f", val {result.metric_name} {metric:.4f}", stats.seconds)
        if on_epoch is not None:
            on_epoch(stats)
        if tracker.update(stats):
            result.best_epoch = epoch
            result.best_val_loss = val_loss if val_loss is not None else stats.loss
            result.best_val_metric = metric
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in kept.state_dict().items()}
        # Stopping early is only allowed once the model has had a fair number of updates. Overfitting is
        # recorded when first seen (after min_epochs), but the round still runs to its step floor: on the
        # tiny validation splits of early rounds a rising val loss is often noise, and the best epoch's
        # weights are what is kept either way.
        may_stop = epoch + 1 >= opts.min_epochs and state["step"] >= opts.min_steps
        if (not result.overfit and epoch + 1 >= opts.min_epochs
                and is_overfitting(result.history, opts.overfit_epochs, opts.overfit_margin)):
            result.overfit, result.overfit_epoch = True, epoch
        if result.overfit and may_stop:
            result.stop_reason = "overfitting"
            break
        if may_stop and tracker.since_best >= opts.patience:
            result.stop_reason = "early_stopping"
            break
    result.watched, result.steps = tracker.watched, state["step"]
    result.train_images_per_s = state["train_images"] / state["train_time"] if state["train_time"] > 0 else 0.0
    if best_state is None:
        best_state = copy.deepcopy({k: v.cpu() for k, v in kept.state_dict().items()})
    return result, best_state


class _Best:
    """Which epoch is best so far, and how many epochs since.

    Lower val loss is better; with ``early_stop_on = "val_metric"`` a higher
    metric is, ties (within ``min_delta``) going to the lower val loss. Without
    a validation split the train loss is the only signal there is.
    """

    def __init__(self, opts: FitOptions) -> None:
        self.on_metric = opts.early_stop_on == "val_metric"
        self.min_delta = opts.min_delta
        self.best: tuple[float, float] | None = None
        self.since_best = 0
        self.watched = "train_loss"

    def update(self, stats: EpochStats) -> bool:
        if stats.val_loss is None:
            key, self.watched = (stats.loss, 0.0), "train_loss"
        elif self.on_metric and stats.val_metric is not None:
            key, self.watched = (-stats.val_metric, stats.val_loss), "val_metric"
        else:
            key, self.watched = (stats.val_loss, 0.0), "val_loss"
        better = self.best is None or key[0] < self.best[0] - self.min_delta or \
            (abs(key[0] - self.best[0]) <= self.min_delta and key[1] < self.best[1] - self.min_delta)
        if better:
            self.best, self.since_best = key, 0
        else:
            self.since_best += 1
        return better


def _train_epoch(model, loader, task, opts: FitOptions, device, norm, criterion, optimizer, params, state: dict,
                 total_steps: int, epoch: int, amp: bool, should_cancel, batch_augment) -> tuple[float, int, float]:
    """One pass over the loader; returns (mean train loss, images seen, last learning rate)."""
    _loss_mode(model, training=True)
    running, seen, lr = 0.0, 0, opts.lr
    warmup = min(opts.warmup_steps, total_steps // 5)
    for images, targets in tqdm(_fetch_single_threaded(loader), total=len(loader),
                                desc=f"epoch {epoch + 1}/{opts.epochs}", leave=False, disable=None):
        if should_cancel is not None and should_cancel():
            raise RoundCancelled(f"cancelled during epoch {epoch + 1}")
        lr = lr_at(state["step"], total_steps, opts.lr, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if batch_augment is not None:
            images = batch_augment(images.to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = compute_loss(model, norm(images), _to_device(targets, device), task, criterion)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        if state["ema"] is not None:
            state["ema"].update(model)
        running += float(loss.detach()) * len(images)
        seen += len(images)
        state["step"] += 1
    return running / max(1, seen), seen, lr


def _fetch_single_threaded(loader):
    """Yield the loader's batches, building them with one intra-op thread when in this process.

    Augmentation is many tiny tensor ops: spread over threads they spend more
    time synchronizing than computing, and on a busy machine far more.
    Workers already run single-threaded.
    """
    it = iter(loader)
    threads = torch.get_num_threads()
    heavy = getattr(loader.dataset, "per_image_augment", True)  # nothing to gain (and a pool resize to pay) if not
    in_process = heavy and getattr(loader, "num_workers", 0) == 0 and threads > 1
    while True:
        if in_process:
            torch.set_num_threads(1)
        try:
            batch = next(it)
        except StopIteration:
            return
        finally:
            if in_process:
                torch.set_num_threads(threads)
        yield batch


def is_overfitting(history: list[EpochStats], n: int, margin: float = 0.1) -> bool:
    """Val loss rose in each of the last ``n`` epochs, to clearly above its best, while train loss fell.

    Train loss is compared across the window rather than epoch by epoch: near
    zero it jitters with the batch order, and that jitter must not hide a val
    loss that climbs steadily. The climb must end ``margin`` (relative, and at
    least 0.01) above the best val loss before it, so a small validation set
    wobbling at its minimum is not called overfitting.
    """
    if len(history) < n + 1:
        return False
    window = history[-(n + 1):]
    if any(h.val_loss is None for h in window):
        return False
    val_rising = all(b.val_loss > a.val_loss for a, b in zip(window, window[1:]))
    best = min(h.val_loss for h in history[:-n] if h.val_loss is not None)
    clear = window[-1].val_loss - best >= max(margin * best, 0.01)
    return val_rising and clear and window[-1].loss < window[0].loss


@torch.no_grad()
def predict(model: nn.Module, loader, task: str, norm: Normalizer) -> tuple[list, list]:
    """Classification: (predicted indices, true indices); detection: (predictions, targets) on the CPU."""
    model.eval()
    preds, truths = [], []
    for images, targets in loader:
        out = model(norm(images))
        if task == "classification":
            preds += out.argmax(1).cpu().tolist()
            truths += targets.tolist()
        else:
            preds += [{k: v.float().cpu() for k, v in o.items()} for o in out]
            truths += list(targets)
    return preds, truths
