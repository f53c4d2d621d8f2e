"""Pure drift arithmetic: PSI with smoothing, levels, windows of cumulative histograms, alerts, budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.metrics import ConfidenceHistogram, hist_bin
from protocol.messages import HIST_BINS
from trainer.drift.psi import (AlertThresholds, decide_alert, joint_psi, level, per_class_psi, psi_counts,
                               raised_budget, smooth, window)

EPS = 1e-3


def test_psi_matches_the_documented_formula():
    ref, live = [50, 30, 20, 0], [20, 30, 40, 10]
    e, a = smooth(ref, EPS), smooth(live, EPS)
    assert sum(e) == pytest.approx(1.0) and sum(a) == pytest.approx(1.0)
    assert e[3] == pytest.approx(EPS / (1 + 4 * EPS))  # an empty cell stays finite
    expected = sum((x - y) * math.log(x / y) for x, y in zip(a, e))
    assert psi_counts(ref, live, EPS) == pytest.approx(expected)
    assert psi_counts(ref, live, EPS) == pytest.approx(psi_counts(live, ref, EPS))  # PSI is symmetric
    assert psi_counts(ref, [5, 3, 2, 0], EPS) == pytest.approx(0.0, abs=1e-12)  # same proportions
    with pytest.raises(ValueError):
        psi_counts([1, 2], [1, 2, 3], EPS)


def test_levels_at_the_documented_thresholds():
    assert [level(p, 500, 200) for p in (0.0, 0.0999, 0.1, 0.25, 0.2501)] == \
        ["stable", "stable", "moderate", "moderate", "drift"]
    assert level(0.9, 199, 200) == "insufficient" and level(None, 500, 200) == "insufficient"


def test_joint_psi_sees_a_class_mix_change_that_per_class_psi_does_not():
    conf = (0,) * 8 + (10, 90)
    ref = {"cat": conf, "dog": conf}
    live = {"cat": tuple(9 * c for c in conf), "dog": conf}  # same confidences, 90 % cats now
    assert joint_psi(ref, live, EPS) > 0.25
    assert per_class_psi(ref, live, EPS, 50) == {"cat": pytest.approx(0.0, abs=1e-12),
                                                 "dog": pytest.approx(0.0, abs=1e-12)}
    live["fox"] = (0,) * 9 + (5,)  # a class the test split never predicted: too few to judge alone
    assert per_class_psi(ref, live, EPS, 50)["fox"] is None


def test_confidence_sliding_down_is_drift_and_sampling_noise_is_not():
    rng = np.random.default_rng(0)
    ref, same, lower = ConfidenceHistogram(), ConfidenceHistogram(), ConfidenceHistogram()
    for c in rng.beta(8, 2, 5000):
        ref.add("cat", float(c))
    for c in rng.beta(8, 2, 1000):
        same.add("cat", float(c))
    for c in rng.beta(4, 3, 1000):
        lower.add("cat", float(c))
    assert level(joint_psi(ref.snapshot(), same.snapshot(), EPS), 1000, 200) == "stable"
    assert level(joint_psi(ref.snapshot(), lower.snapshot(), EPS), 1000, 200) == "drift"


def test_bins_are_the_agents_bins():
    # the agent's ConfidenceHistogram fills exactly the bins the reference and the PSI use
    h = ConfidenceHistogram()
    for c in (0.0, 0.05, 0.1, 0.55, 0.999, 1.0):
        h.add("a", c)
    assert h.snapshot()["a"] == (2, 1, 0, 0, 0, 1, 0, 0, 0, 2) and len(h.snapshot()["a"]) == HIST_BINS
    assert hist_bin(1.0) == HIST_BINS - 1


def test_window_is_the_difference_of_cumulative_snapshots():
    base = {"a": (1,) * 10}
    latest = {"a": (3,) * 10, "b": (0,) * 9 + (4,)}
    assert window(latest, base) == {"a": (2,) * 10, "b": (0,) * 9 + (4,)}
    assert window(latest, None) == latest
    assert window({"a": (0,) * 10}, base) is None  # counts went down: the agent restarted or swapped


def test_alerts_fire_once_and_clear_with_hysteresis():
    t = AlertThresholds(alert_psi=0.25, clear_psi=0.2, min_samples=100)
    assert decide_alert(False, 0.3, 99, t) == "none"  # too few frames to judge
    assert decide_alert(False, 0.25, 500, t) == "none"  # not above
    assert decide_alert(False, 0.3, 500, t) == "fire"
    assert decide_alert(True, 0.4, 500, t) == "none"  # already firing: once
    assert decide_alert(True, 0.22, 500, t) == "none"  # between clear and alert: still firing
    assert decide_alert(True, 0.19, 500, t) == "clear"
    assert decide_alert(True, None, 500, t) == "none"


def test_budget_raise_multiplies_up_to_the_cap():
    assert raised_budget(None, 10, 2.0, 600) == 20
    assert raised_budget(400, 10, 2.0, 600) == 600
    assert raised_budget(600, 10, 2.0, 600) is None
    assert raised_budget(1, 10, 1.1, 600) == 2  # always at least one more frame
