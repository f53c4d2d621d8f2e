"""The promotion gate is a pure function: every rule refuses on its own, and the margin is respected."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from trainer.publish.gate import GateConfig, decide


def cls_metrics(acc: float) -> dict:
    return {"accuracy": acc, "n": 100}


def per_class(**recalls: float) -> dict:
    return {k: {"precision": v, "recall": v, "support": 20} for k, v in recalls.items()}


def test_first_model_passes_without_a_fleet_model():
    d = decide(cls_metrics(0.5), None, per_class(a=0.5), None, overfit=False)
    assert d.publish and d.reasons == [] and d.current is None


def test_better_candidate_passes():
    d = decide(cls_metrics(0.9), cls_metrics(0.8), per_class(a=0.9, b=0.9), per_class(a=0.8, b=0.8), False)
    assert d.publish, d.reasons
    assert d.metric == "accuracy" and d.candidate == 0.9 and d.current == 0.8


def test_equal_scores_never_pass_classification():
    # The headless demo once published a candidate that scored 0.611 like the fleet model.
    d = decide(cls_metrics(0.611), cls_metrics(0.611), per_class(a=0.6), per_class(a=0.6), False)
    assert not d.publish
    assert d.reasons == ["accuracy 0.6110 vs fleet 0.6110: equal, and a candidate must beat the fleet model"]


def test_equal_within_float_noise_is_still_a_tie():
    assert not decide(cls_metrics(0.1 + 0.2), cls_metrics(0.3), None, None, False).publish


def test_detection_tie_at_zero_never_passes():
    d = decide({"map": 0.0, "map_50": 0.0}, {"map": 0.0, "map_50": 0.0}, None, None, False)
    assert not d.publish and d.metric == "map_50"
    assert d.reasons == ["map_50 0.0000 vs fleet 0.0000: equal, and a candidate must beat the fleet model"]


def test_worse_candidate_is_not_published():
    d = decide(cls_metrics(0.79), cls_metrics(0.8), per_class(a=0.8), per_class(a=0.8), False)
    assert not d.publish
    assert any(r == "accuracy 0.7900 vs fleet 0.8000: worse by 0.0100" for r in d.reasons)


def test_gain_below_min_gain_is_refused_and_at_min_gain_passes():
    must_gain = GateConfig(min_gain=0.05)
    d = decide(cls_metrics(0.84), cls_metrics(0.8), None, None, False, must_gain)
    assert not d.publish and d.reasons == ["accuracy 0.8400 vs fleet 0.8000: gain +0.0400 below min_gain +0.0500"]
    assert decide(cls_metrics(0.85), cls_metrics(0.8), None, None, False, must_gain).publish
    det = decide({"map_50": 0.52}, {"map_50": 0.5}, None, None, False, must_gain)
    assert not det.publish and "below min_gain" in det.reasons[0]


def test_negative_min_gain_is_refused_with_the_way_out():
    with pytest.raises(ValidationError, match="require_gain = false"):
        GateConfig(min_gain=-0.02)


def test_require_gain_off_skips_only_the_headline_comparison():
    off = GateConfig(require_gain=False, max_class_drop=0.1)
    assert decide(cls_metrics(0.7), cls_metrics(0.8), None, None, False, off).publish
    assert decide(cls_metrics(0.8), cls_metrics(0.8), None, None, False, off).publish
    d = decide(cls_metrics(0.8), cls_metrics(0.8), per_class(a=0.5), per_class(a=0.9), False, off)
    assert not d.publish and "class 'a': recall dropped" in d.reasons[0]
    assert not decide(cls_metrics(0.9), cls_metrics(0.8), None, None, True, off).publish


def test_per_class_drop_refused_even_when_accuracy_improves():
    d = decide(cls_metrics(0.95), cls_metrics(0.9), per_class(a=1.0, b=0.6), per_class(a=0.8, b=0.9), False,
               GateConfig(max_class_drop=0.1))
    assert not d.publish
    assert d.reasons == ["class 'b': recall dropped 0.9000 -> 0.6000 (more than 0.1000)"]


def test_per_class_drop_within_limit_passes():
    d = decide(cls_metrics(0.95), cls_metrics(0.9), per_class(a=1.0, b=0.85), per_class(a=0.8, b=0.9), False,
               GateConfig(max_class_drop=0.1))
    assert d.publish, d.reasons


def test_class_missing_from_candidate_refused_and_small_support_ignored():
    cur = per_class(a=0.8, b=0.9)
    cur["rare"] = {"precision": 1.0, "recall": 1.0, "support": 1}
    d = decide(cls_metrics(0.95), cls_metrics(0.9), per_class(a=0.8), cur, False, GateConfig(min_class_support=2))
    assert not d.publish
    assert d.reasons == ["class 'b': no recall for the candidate (fleet 0.9000)"]


def test_overfit_refused_unless_configured_off():
    d = decide(cls_metrics(0.95), cls_metrics(0.9), None, None, overfit=True)
    assert not d.publish and "overfitting" in d.reasons[0]
    assert decide(cls_metrics(0.95), cls_metrics(0.9), None, None, True, GateConfig(refuse_overfit=False)).publish


def test_overfit_refused_for_a_first_model_too():
    assert not decide(cls_metrics(0.95), None, None, None, overfit=True).publish


def test_detection_uses_map50_and_per_class_ap():
    cand = {"map": 0.4, "map_50": 0.7}
    cur = {"map": 0.45, "map_50": 0.65}
    pc_cand = {"cat": {"ap": 0.4, "ap_50": 0.5}, "dog": {"ap": 0.4, "ap_50": 0.9}}
    pc_cur = {"cat": {"ap": 0.45, "ap_50": 0.7}, "dog": {"ap": 0.45, "ap_50": 0.6}}
    d = decide(cand, cur, pc_cand, pc_cur, False, GateConfig(max_class_drop=0.1))
    assert d.metric == "map_50"
    assert d.reasons == ["class 'cat': ap_50 dropped 0.7000 -> 0.5000 (more than 0.1000)"]
    strict = decide(cand, cur, pc_cand, pc_cur, False, GateConfig(metric="map", max_class_drop=0.1))
    assert any("map 0.4000 vs fleet 0.4500: worse" in r for r in strict.reasons)


def test_detection_per_class_ap_drop_refused_with_enough_support():
    cand, cur = {"map_50": 0.72}, {"map_50": 0.70}
    pc_cur = {"car": {"ap_50": 0.8, "support": 40}, "bike": {"ap_50": 0.6, "support": 12}}
    pc_cand = {"car": {"ap_50": 0.9, "support": 40}, "bike": {"ap_50": 0.45, "support": 12}}
    d = decide(cand, cur, pc_cand, pc_cur, False, GateConfig(max_class_drop=0.1, min_class_support=10))
    assert not d.publish
    assert d.reasons == ["class 'bike': ap_50 dropped 0.6000 -> 0.4500 (more than 0.1000)"]
    # Twelve bikes in the test split are too few to judge when 20 are asked for.
    assert decide(cand, cur, pc_cand, pc_cur, False, GateConfig(max_class_drop=0.1, min_class_support=20)).publish


def test_detection_class_without_ground_truth_is_not_judged():
    pc_cur = {"cat": {"ap": None, "ap_50": None}}
    d = decide({"map_50": 0.7}, {"map_50": 0.6}, {"cat": {"ap": None, "ap_50": None}}, pc_cur, False)
    assert d.publish, d.reasons


def test_missing_or_nan_metric_is_refused():
    assert not decide({}, None, None, None, False).publish
    assert not decide({"accuracy": float("nan")}, {"accuracy": 0.5}, None, None, False).publish
    d = decide({"accuracy": 0.9}, {"loss": 1.0}, None, None, False)
    assert not d.publish and "compare by hand" in d.reasons[0]


def test_config_is_strict():
    with pytest.raises(ValidationError, match="max_class_dorp"):
        GateConfig(max_class_dorp=0.1)
    with pytest.raises(ValidationError):
        GateConfig(max_class_drop=2)
