"""The promotion gate: may a candidate model replace the fleet model automatically?

``decide`` is pure: metrics in, decision out. A candidate passes when it
beats the current fleet model on the frozen test split: its headline metric
is strictly higher (an equal score, 0.0 against 0.0 included, never passes)
and higher by at least ``min_gain``; no class judged on enough test examples
drops by more than ``max_class_drop`` (per-class recall for classification,
per-class AP for detection); and the round did not end in overfitting. The
first model (no fleet model) passes unless it overfit. ``require_gain =
false`` turns off the headline comparison alone, for a team that reviews
every round by hand. A refused candidate is kept (state ``rejected`` with
these reasons) and a person can still publish it explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EPS = 1e-9  # metrics are ratios of small integers: float noise is neither a gain nor a loss
# The per-class figure that goes with each headline metric.
CLASS_METRIC = {"accuracy": "recall", "map": "ap", "map_50": "ap_50"}


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # auto: accuracy for classification, map_50 for detection (whichever the metrics carry).
    metric: Literal["auto", "accuracy", "map", "map_50"] = "auto"
    # candidate - current must be > 0 (a strict improvement, always) and >= min_gain.
    min_gain: float = Field(0.0, le=1.0)
    # false: skip the headline comparison (ties and regressions pass it); the other checks still apply.
    require_gain: bool = True
    max_class_drop: float = Field(0.10, ge=0.0, le=1.0)  # per-class recall / AP, absolute
    # Classes with fewer test examples (detection: ground-truth boxes) are not judged: too noisy.
    min_class_support: int = Field(5, ge=0)
    refuse_overfit: bool = True

    @field_validator("min_gain")
    @classmethod
    def _no_tolerance(cls, v: float) -> float:
        if v < 0:
            raise ValueError(
                f"min_gain {v} is negative: a candidate must beat the fleet model, so a tie or a loss never "
                "passes. Set min_gain >= 0; to roll out every round regardless, set require_gain = false, "
                "or publish a refused model by hand (edgeloop publish VERSION)")
        return v


@dataclass(frozen=True)
class GateDecision:
    publish: bool
    reasons: list[str] = field(default_factory=list)
    metric: str = ""
    candidate: float | None = None
    current: float | None = None

    def to_dict(self) -> dict:
        return {"publish": self.publish, "reasons": list(self.reasons), "metric": self.metric,
                "candidate": self.candidate, "current": self.current}


def headline_metric(metrics: dict, config: GateConfig) -> str:
    if config.metric != "auto":
        return config.metric
    for key in ("accuracy", "map_50", "map"):
        if isinstance(metrics.get(key), (int, float)):
            return key
    return "accuracy"


def decide(candidate_metrics: dict, current_metrics: dict | None, per_class_candidate: dict | None,
           per_class_current: dict | None, overfit: bool, config: GateConfig = GateConfig()) -> GateDecision:
    """Judge a candidate against the current fleet model (``current_metrics=None``: there is none)."""
    metric = headline_metric(candidate_metrics, config)
    reasons: list[str] = []
    cand = _number(candidate_metrics.get(metric))
    if cand is None:
        return GateDecision(False, [f"candidate has no {metric} on the test split"], metric)
    if overfit and config.refuse_overfit:
        reasons.append("the round ended in overfitting (train loss fell while val loss rose)")
    cur = _number((current_metrics or {}).get(metric)) if current_metrics is not None else None
    if current_metrics is not None and cur is None:
        reasons.append(f"current fleet model has no {metric}: compare by hand")
    if cur is not None and config.require_gain:
        reasons.extend(_gain(metric, cand, cur, config.min_gain))
    if cur is not None:
        reasons.extend(_class_drops(per_class_candidate or {}, per_class_current or {}, metric, config))
    return GateDecision(not reasons, reasons, metric, cand, cur)


def _gain(metric: str, cand: float, cur: float, min_gain: float) -> list[str]:
    gain = cand - cur
    head = f"{metric} {cand:.4f} vs fleet {cur:.4f}"
    if abs(gain) <= EPS:
        return [f"{head}: equal, and a candidate must beat the fleet model"]
    if gain < 0:
        return [f"{head}: worse by {-gain:.4f}"]
    if gain < min_gain - EPS:
        return [f"{head}: gain {gain:+.4f} below min_gain {min_gain:+.4f}"]
    return []


def _class_drops(cand: dict, cur: dict, metric: str, config: GateConfig) -> list[str]:
    key = CLASS_METRIC[metric]
    out = []
    for label in sorted(cur):
        before = _class_value(cur[label], key)
        if before is None or _support(cur[label]) < config.min_class_support:
            continue
        after = _class_value(cand.get(label), key)
        if after is None:
            # A class the fleet model was judged on must not vanish from the candidate's evaluation.
            out.append(f"class {label!r}: no {key} for the candidate (fleet {before:.4f})")
        elif before - after > config.max_class_drop + EPS:
            out.append(f"class {label!r}: {key} dropped {before:.4f} -> {after:.4f} "
                       f"(more than {config.max_class_drop:.4f})")
    return out


def _class_value(entry: object, key: str) -> float | None:
    if isinstance(entry, dict):
        return _number(entry.get(key))
    return _number(entry)  # a bare number per class is accepted too


def _support(entry: object) -> int:
    if isinstance(entry, dict) and isinstance(entry.get("support"), int):
        return entry["support"]
    return 1 << 30  # a figure recorded without its support (older records): judge it


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if v != v:  # NaN is no measurement
        return None
    return float(v)
