"""Which frames to send: uncertainty strategies, then limits.

Each strategy is a pure function ``(prediction, context, params) -> Decision |
None`` in the STRATEGIES table, configured by name. Randomness comes in
through ``context.rng``. The Sampler runs the configured strategies in order
(the first that picks wins), then the class filter, per-camera rate limits,
per-class quotas and near-duplicate suppression. Every frame a
strategy picked but a limit refused is counted as a drop with its reason.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from .config import SamplingConfig
from .metrics import Counters
from .model import Prediction

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


@dataclass(frozen=True)
class Decision:
    strategy: str
    uncertainty: float  # higher = more useful to label; also the outbox keeps high ones longest
    reason: str  # for people: why this frame was picked


@dataclass(frozen=True)
class Context:
    previous: Prediction | None  # the same camera's previous prediction (flicker)
    rng: random.Random


# -- strategies ------------------------------------------------------------------

def _sorted_scores(pred: Prediction) -> np.ndarray:
    return np.sort(pred.scores)[::-1]


def least_confidence(pred: Prediction, ctx: Context, p) -> Decision | None:
    if pred.task != "classification":
        return None
    top = float(_sorted_scores(pred)[0])
    u = 1.0 - top
    if u < p.threshold:
        return None
    return Decision("least_confidence", u, f"top-1 confidence {top:.3f} <= {1 - p.threshold:.3f}")


def margin(pred: Prediction, ctx: Context, p) -> Decision | None:
    if pred.task != "classification" or pred.scores.size < 2:
        return None
    s = _sorted_scores(pred)
    m = float(s[0] - s[1])
    if m > p.threshold:
        return None
    return Decision("margin", 1.0 - m, f"margin {m:.3f} between the top two classes <= {p.threshold:.3f}")


def entropy(pred: Prediction, ctx: Context, p) -> Decision | None:
    if pred.task != "classification" or pred.scores.size < 2:
        return None
    q = pred.scores.astype(np.float64)
    q = q / max(q.sum(), 1e-12)
    h = float(-(q * np.log(np.clip(q, 1e-12, 1.0))).sum() / math.log(q.size))
    if h < p.threshold:
        return None
    return Decision("entropy", h, f"normalized entropy {h:.3f} >= {p.threshold:.3f}")


def _band(pred: Prediction, low: float, high: float) -> np.ndarray:
    return (pred.box_scores >= low) & (pred.box_scores <= high)


def threshold_band(pred: Prediction, ctx: Context, p) -> Decision | None:
    if pred.task != "detection":
        return None
    inside = _band(pred, p.low, p.high)
    if not inside.any():
        return None
    n = int(inside.sum())
    # closest to the middle of the band = the model is least sure
    mid, half = (p.low + p.high) / 2, max((p.high - p.low) / 2, 1e-6)
    u = float(1.0 - np.min(np.abs(pred.box_scores[inside] - mid)) / half)
    return Decision("threshold_band", max(0.0, u), f"{n} box(es) with score in [{p.low:.2f}, {p.high:.2f}]")


def band_count(pred: Prediction, ctx: Context, p) -> Decision | None:
    if pred.task != "detection":
        return None
    n = int(_band(pred, p.low, p.high).sum())
    if n < p.min_count:
        return None
    return Decision("band_count", float(n), f"{n} boxes with score in [{p.low:.2f}, {p.high:.2f}] >= {p.min_count}")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def count_changes(cur: tuple[np.ndarray, np.ndarray], prev: tuple[np.ndarray, np.ndarray], iou: float) -> int:
    """Boxes of either frame without a same-label partner (IoU >= iou) in the other, greedy."""
    (cb, cl), (pb, pl) = cur, prev
    m = iou_matrix(cb, pb)
    m[cl[:, None] != pl[None, :]] = 0.0
    matched = 0
    while m.size and m.max() >= iou:
        i, j = np.unravel_index(int(np.argmax(m)), m.shape)
        m[i, :] = 0.0
        m[:, j] = 0.0
        matched += 1
    return len(cb) + len(pb) - 2 * matched


def flicker(pred: Prediction, ctx: Context, p) -> Decision | None:
    if pred.task != "detection" or ctx.previous is None:
        return None

    def present(q: Prediction) -> tuple[np.ndarray, np.ndarray]:
        keep = q.box_scores >= p.min_score
        return q.boxes[keep], q.box_labels[keep]

    cur, prev = present(pred), present(ctx.previous)
    changes = count_changes(cur, prev, p.iou)
    if changes < p.min_changes:
        return None
    u = changes / max(1, len(cur[0]) + len(prev[0]))
    return Decision("flicker", float(u), f"{changes} detection(s) appeared or vanished since the previous frame")


def random_audit(pred: Prediction, ctx: Context, p) -> Decision | None:
    if ctx.rng.random() >= p.rate:
        return None
    return Decision("random", frame_uncertainty(pred), f"random audit ({p.rate:.2%} of frames), picked regardless")


def frame_uncertainty(pred: Prediction) -> float:
    """A strategy-free uncertainty in [0, 1]: 1 - top-1, or closeness of the best box to the threshold."""
    if pred.task == "classification":
        return float(1.0 - pred.scores.max()) if pred.scores.size else 0.0
    if pred.box_scores.size == 0:
        return 0.0
    t = pred.threshold
    return float(np.max(1.0 - np.abs(pred.box_scores - t) / max(t, 1 - t, 1e-6)))


STRATEGIES: dict[str, Callable[[Prediction, Context, object], Decision | None]] = {
    "least_confidence": least_confidence, "margin": margin, "entropy": entropy,
    "threshold_band": threshold_band, "band_count": band_count, "flicker": flicker, "random": random_audit,
}


def seen_labels(pred: Prediction) -> set[str]:
    """Top-1 class, or the label of every box returned (candidates included)."""
    if pred.task == "classification":
        return pred.present()
    return {pred.labels[int(i)] for i in pred.box_labels}


def class_filter(pred: Prediction, classes: frozenset[str]) -> bool:
    """True when the frame may be sampled: no filter, or it shows one of ``classes``."""
    return not classes or bool(seen_labels(pred) & classes)


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash: robust to noise and small light changes, cheap (a 9x8 resize)."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).reshape(-1)
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def rate_limited(times: list[float], now: float, limits: tuple[tuple[str, float, int], ...]) -> str | None:
    """The first window (name, seconds, max) already full at ``now``; ``times`` sorted; 0 means no limit."""
    for name, window, limit in limits:
        if limit and len(times) - bisect.bisect_right(times, now - window) >= limit:
            return name
    return None


class _CameraState:
    def __init__(self, window: int) -> None:
        self.previous: Prediction | None = None
        self.times: list[float] = []  # pick times within the last day, sorted
        self.hashes: deque[int] = deque(maxlen=window)
        self.class_times: dict[str, deque[float]] = {}


class Sampler:
    """Applies strategies and limits per camera. Not thread-safe: the inference thread owns it."""

    def __init__(self, cfg: SamplingConfig, rng: random.Random, counters: Counters) -> None:
        self.cfg = cfg
        self.rng = rng
        self.counters = counters
        self.classes = frozenset(cfg.classes)
        self.limits = (("rate_limit_minute", MINUTE, cfg.per_minute), ("rate_limit_hour", HOUR, cfg.per_hour),
                       ("rate_limit_day", DAY, cfg.per_day))
        self.class_quota = max(1, math.ceil(cfg.class_share * cfg.per_hour)) if cfg.per_hour else 0
        self._cams: dict[str, _CameraState] = {}

    def _drop(self, reason: str) -> None:
        self.counters.add(reason)

    def decide(self, camera_id: str, pred: Prediction, image: np.ndarray, now: float) -> Decision | None:
        cam = self._cams.setdefault(camera_id, _CameraState(self.cfg.dedup_window))
        ctx = Context(cam.previous, self.rng)
        cam.previous = pred
        decision = None
        for params in self.cfg.strategies:
            d = STRATEGIES[params.name](pred, ctx, params)
            if d is not None and decision is None:
                decision = d  # keep evaluating: random audit must draw every frame to stay reproducible
        if decision is None:
            return None
        if not class_filter(pred, self.classes):
            self._drop("class_filter")
            return None
        if cam.times and cam.times[0] <= now - DAY:
            del cam.times[:bisect.bisect_right(cam.times, now - DAY)]
        limited = rate_limited(cam.times, now, self.limits)
        if limited:
            self._drop(limited)
            return None
        labels = seen_labels(pred) or {"(none)"}
        if self.class_quota and all(self._class_count(cam, lab, now) >= self.class_quota for lab in labels):
            self._drop("class_quota")
            return None
        h = dhash(image) if self.cfg.dedup_hamming else None
        if h is not None and any(hamming(h, old) <= self.cfg.dedup_hamming for old in cam.hashes):
            self._drop("near_duplicate")
            return None
        bisect.insort(cam.times, now)  # frames of one camera arrive in order; insort keeps it safe if not
        if h is not None:
            cam.hashes.append(h)
        for lab in labels:
            cam.class_times.setdefault(lab, deque()).append(now)
        return decision

    @staticmethod
    def _class_count(cam: _CameraState, label: str, now: float) -> int:
        times = cam.class_times.get(label)
        if not times:
            return 0
        while times and times[0] <= now - HOUR:
            times.popleft()
        return len(times)
