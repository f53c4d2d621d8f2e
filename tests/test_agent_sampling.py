"""Sampling strategies (pure functions) and the Sampler's limits."""

from __future__ import annotations

import random

import numpy as np
import pytest

from agent.config import SamplingConfig
from agent.metrics import Counters, hist_bin, percentile
from agent.model import Prediction
from agent.sampling import (STRATEGIES, Context, Sampler, class_filter, count_changes, dhash, hamming,
                            rate_limited)
from agent.synthetic import SyntheticCamera

LABELS = ("cat", "dog", "bird")


def cls_pred(*scores: float) -> Prediction:
    return Prediction("classification", LABELS, np.array(scores, np.float32), np.zeros((0, 4), np.float32),
                      np.zeros(0, np.float32), np.zeros(0, np.int64), 0.0)


def det_pred(boxes, scores, labels, threshold=0.5) -> Prediction:
    return Prediction("detection", LABELS, np.zeros(0, np.float32), np.array(boxes, np.float32).reshape(-1, 4),
                      np.array(scores, np.float32), np.array(labels, np.int64), threshold)


def params(name: str, **kw):
    cfg = SamplingConfig(strategies=[{"name": name, **kw}])
    return cfg.strategies[0]


CTX = Context(None, random.Random(0))


@pytest.mark.parametrize("name,kw,unsure,sure", [
    ("least_confidence", {"threshold": 0.5}, (0.4, 0.35, 0.25), (0.9, 0.05, 0.05)),
    ("margin", {"threshold": 0.1}, (0.45, 0.4, 0.15), (0.7, 0.2, 0.1)),
    ("entropy", {"threshold": 0.9}, (0.34, 0.33, 0.33), (0.98, 0.01, 0.01)),
])
def test_classification_strategies_pick_unsure_frames_only(name, kw, unsure, sure):
    fn = STRATEGIES[name]
    d = fn(cls_pred(*unsure), CTX, params(name, **kw))
    assert d is not None and d.strategy == name and d.reason and d.uncertainty > 0
    assert fn(cls_pred(*sure), CTX, params(name, **kw)) is None
    assert fn(det_pred([], [], []), CTX, params(name, **kw)) is None  # wrong task: never picks


def test_detection_band_and_count():
    pred = det_pred([[0, 0, .2, .2], [.3, .3, .5, .5], [.6, .6, .9, .9]], [0.45, 0.55, 0.95], [0, 1, 0])
    d = STRATEGIES["threshold_band"](pred, CTX, params("threshold_band", low=0.4, high=0.6))
    assert d is not None and "2 box(es)" in d.reason
    assert STRATEGIES["threshold_band"](pred, CTX, params("threshold_band", low=0.7, high=0.9)) is None
    assert STRATEGIES["band_count"](pred, CTX, params("band_count", low=0.4, high=0.6, min_count=2)) is not None
    assert STRATEGIES["band_count"](pred, CTX, params("band_count", low=0.4, high=0.6, min_count=3)) is None


def test_flicker_counts_boxes_that_appear_or_vanish():
    a = det_pred([[0, 0, .2, .2], [.5, .5, .8, .8]], [0.9, 0.9], [0, 1])
    same = det_pred([[0.01, 0, .2, .21], [.5, .5, .8, .8]], [0.8, 0.7], [0, 1])
    lost_one = det_pred([[0, 0, .2, .2]], [0.9], [0])
    relabelled = det_pred([[0, 0, .2, .2], [.5, .5, .8, .8]], [0.9, 0.9], [0, 2])
    p = params("flicker", min_score=0.5, iou=0.5, min_changes=1)
    fn = STRATEGIES["flicker"]
    assert fn(same, Context(a, random.Random(0)), p) is None
    assert "1 detection" in fn(lost_one, Context(a, random.Random(0)), p).reason
    assert fn(relabelled, Context(a, random.Random(0)), p) is not None  # label flip: one vanished, one appeared
    assert fn(a, Context(None, random.Random(0)), p) is None  # first frame: nothing to compare
    assert count_changes((np.zeros((0, 4)), np.zeros(0)), (np.zeros((0, 4)), np.zeros(0)), 0.5) == 0


def test_random_audit_uses_the_injected_rng():
    p = params("random", rate=0.25)
    picks = [STRATEGIES["random"](cls_pred(0.99, 0.005, 0.005), Context(None, rng), p) is not None
             for rng in [random.Random(7)] for _ in range(2000)]
    again = [STRATEGIES["random"](cls_pred(0.99, 0.005, 0.005), Context(None, rng), p) is not None
             for rng in [random.Random(7)] for _ in range(2000)]
    assert picks == again
    assert 400 < sum(picks) < 600


def test_class_filter():
    assert class_filter(cls_pred(0.2, 0.7, 0.1), frozenset())
    assert class_filter(cls_pred(0.2, 0.7, 0.1), frozenset({"dog"}))
    assert not class_filter(cls_pred(0.2, 0.7, 0.1), frozenset({"cat"}))
    assert class_filter(det_pred([[0, 0, 1, 1]], [0.3], [2]), frozenset({"bird"}))  # candidate boxes count


def test_dhash_near_duplicates():
    cam = SyntheticCamera(seed=3, width=160, height=120, hold=5, noise=4.0)
    a, b, other = cam.frame(0).image, cam.frame(1).image, cam.frame(5).image  # b: same scene, new noise
    assert hamming(dhash(a), dhash(b)) <= 6
    assert hamming(dhash(a), dhash(other)) > 6


def test_rate_limited_windows():
    times = [0.0, 10.0, 20.0]
    limits = (("minute", 60.0, 3), ("hour", 3600.0, 5))
    assert rate_limited(times, 30.0, limits) == "minute"
    assert rate_limited(times, 70.5, limits) is None  # the first pick left the minute window
    assert rate_limited(times, 30.0, (("minute", 60.0, 0),)) is None  # 0 = no limit


def _sampler(**kw) -> tuple[Sampler, Counters]:
    counters = Counters()
    cfg = SamplingConfig(**{"strategies": [{"name": "least_confidence", "threshold": 0.3}], "dedup_hamming": 0,
                            **kw})
    return Sampler(cfg, random.Random(0), counters), counters


def test_sampler_rate_limit_per_camera_and_drop_reasons():
    s, counters = _sampler(per_minute=3, per_hour=100, per_day=1000, class_share=1.0)
    img = SyntheticCamera(seed=1).frame(0).image
    unsure = cls_pred(0.4, 0.3, 0.3)
    picked = [s.decide("a", unsure, img, now=100.0 + i) for i in range(5)]
    assert sum(p is not None for p in picked) == 3
    assert counters.get("rate_limit_minute") == 2
    assert s.decide("b", unsure, img, now=104.0) is not None  # another camera has its own budget
    assert s.decide("a", unsure, img, now=170.0) is not None  # a minute later
    assert s.decide("a", cls_pred(0.9, 0.05, 0.05), img, now=171.0) is None  # confident: not a drop
    assert sum(counters.snapshot().values()) == 2


def test_sampler_class_quota_keeps_room_for_rare_classes():
    s, counters = _sampler(per_minute=0, per_hour=10, per_day=0, class_share=0.3)
    img = SyntheticCamera(seed=1).frame(0).image
    cats = [s.decide("a", cls_pred(0.5, 0.3, 0.2), img, now=float(i)) for i in range(6)]
    assert sum(d is not None for d in cats) == 3  # ceil(0.3 * 10)
    assert counters.get("class_quota") == 3
    assert s.decide("a", cls_pred(0.2, 0.5, 0.3), img, now=7.0) is not None  # a dog still gets in


def test_sampler_suppresses_near_duplicates():
    s, counters = _sampler(per_minute=0, per_hour=0, per_day=0, dedup_hamming=6)
    cam = SyntheticCamera(seed=2, width=160, height=120, hold=10)
    unsure = cls_pred(0.4, 0.3, 0.3)
    picks = [s.decide("a", unsure, cam.frame(i).image, now=float(i)) for i in range(30)]
    assert 3 <= sum(p is not None for p in picks) <= 6  # about one per scene of 10 frames
    assert counters.get("near_duplicate") >= 20


def test_metric_functions():
    assert hist_bin(0.0) == 0 and hist_bin(0.05) == 0 and hist_bin(0.95) == 9 and hist_bin(1.0) == 9
    assert percentile([], 50) == 0.0
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
