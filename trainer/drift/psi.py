"""Pure drift arithmetic: windows of cumulative histograms, PSI, levels, the alert and budget decisions.

Histograms are ``label -> HIST_BINS counts`` of top-1 confidence, exactly
what agents put in ``Telemetry.conf_hist`` (``agent.metrics.hist_bin``: 10
equal bins over [0, 1], 1.0 in the last one). The reference of a model is the
same histogram of its predictions on its frozen test split.

PSI (Population Stability Index) of live proportions ``a`` against reference
proportions ``e`` over cells ``i``::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i),   p_i = (c_i / N + eps) / (1 + K * eps)

where ``c_i`` are counts, ``N`` their total, ``K`` the number of cells and
``eps`` the smoothing that keeps an empty cell finite (default 0.001). The
agent score uses the joint cells (label x bin), so a change in the class mix
and a change in confidence within a class both count; per-class scores use
one class's 10 bins. Levels: PSI < 0.1 stable, 0.1 to 0.25 moderate, > 0.25 drift.

Nothing here reads a clock, the network or a database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from protocol.messages import HIST_BINS

Hist = dict[str, tuple[int, ...]]
STABLE_BELOW = 0.1
DRIFT_ABOVE = 0.25


def smooth(counts: list[int], eps: float) -> list[float]:
    total = sum(counts)
    k = len(counts)
    if total <= 0:
        return [1.0 / k] * k
    return [(c / total + eps) / (1 + k * eps) for c in counts]


def psi_counts(reference: list[int], live: list[int], eps: float) -> float:
    """PSI of two count vectors over the same cells (see the module docstring)."""
    if len(reference) != len(live) or not reference:
        raise ValueError(f"PSI needs two count vectors of one length, got {len(reference)} and {len(live)}")
    e, a = smooth(reference, eps), smooth(live, eps)
    return sum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e))


def _cells(hist: Hist, label: str) -> list[int]:
    return list(hist.get(label, (0,) * HIST_BINS))


def joint_psi(reference: Hist, live: Hist, eps: float) -> float:
    """PSI over every (label, bin) cell of either histogram."""
    labels = sorted(set(reference) | set(live))
    ref = [c for label in labels for c in _cells(reference, label)]
    now = [c for label in labels for c in _cells(live, label)]
    return psi_counts(ref, now, eps)


def per_class_psi(reference: Hist, live: Hist, eps: float, min_samples: int) -> dict[str, float | None]:
    """PSI of each class's confidence bins; None where either side has too few samples to judge."""
    out: dict[str, float | None] = {}
    for label in sorted(set(reference) | set(live)):
        ref, now = _cells(reference, label), _cells(live, label)
        ok = sum(ref) > 0 and sum(now) >= min_samples
        out[label] = psi_counts(ref, now, eps) if ok else None
    return out


def level(psi: float | None, samples: int, min_samples: int) -> str:
    if psi is None or samples < min_samples:
        return "insufficient"
    if psi < STABLE_BELOW:
        return "stable"
    return "moderate" if psi <= DRIFT_ABOVE else "drift"


def window(latest: Hist, base: Hist | None) -> Hist | None:
    """Counts added between two cumulative snapshots of one model's histogram (``base`` None: since the swap).

    None when ``base`` is not an earlier state of ``latest`` (a count went down:
    the agent restarted or swapped models), so the caller starts over.
    """
    if base is None:
        return {k: tuple(v) for k, v in latest.items()}
    out: Hist = {}
    for label in set(latest) | set(base):
        now, then = _cells(latest, label), _cells(base, label)
        diff = [n - t for n, t in zip(now, then)]
        if any(d < 0 for d in diff):
            return None
        out[label] = tuple(diff)
    return out


@dataclass(frozen=True)
class AlertThresholds:
    alert_psi: float = DRIFT_ABOVE  # fire above this
    clear_psi: float = 0.2  # a firing alert clears below this (hysteresis: no flapping at the threshold)
    min_samples: int = 200  # frames in the window before an agent is judged at all


def decide_alert(alerting: bool, psi: float | None, samples: int, t: AlertThresholds
                 ) -> Literal["fire", "clear", "none"]:
    """Fire once when PSI passes ``alert_psi``; clear once it falls below ``clear_psi``; otherwise nothing."""
    if psi is None or samples < t.min_samples:
        return "none"
    if not alerting and psi > t.alert_psi:
        return "fire"
    if alerting and psi < t.clear_psi:
        return "clear"
    return "none"


def raised_budget(current: int | None, base: int, factor: float, cap: int) -> int | None:
    """The sampling budget (frames per minute per camera) after a drift alert; None: leave it (at the cap)."""
    now = base if current is None else current
    new = min(cap, max(now + 1, math.ceil(now * factor)))
    return new if new > now else None
