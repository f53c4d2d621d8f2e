"""The health window of a newly installed model: count what it does on real frames, then judge it.

A model can load, warm up on a zero tensor and pass every shape check, and
still fail on real frames: NaN or inf outputs, errors raised for some inputs,
a confidence that collapses. After each install the agent runs the new model
on probation: the inference loop records every frame's outcome per model
version (``HealthWindow.record``), and the updater thread asks the pure
``health_verdict`` whether the window passed, failed or is still open. A
failed window makes the updater go back to the previous model.

The rules, in order (``frames`` counts every inference attempted on the version):

1. failed when ``errors > max_error_rate * max(frames, min_frames)``: an
   error rate that is already over the limit for the smallest window fails at
   once, without waiting for ``min_frames``;
2. the same for non-finite outputs with ``max_nonfinite_rate`` (default 0:
   one NaN frame fails, because such a frame can never be sent);
3. pending until at least ``min_frames`` frames and ``window_s`` seconds;
4. failed when the mean top-1 confidence fell below
   ``(1 - max_confidence_drop)`` times the previous model's (when the
   previous model has ``min_frames`` frames to compare with);
5. ok.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Literal

from .config import HealthConfig

Outcome = Literal["ok", "error", "nonfinite"]
Verdict = Literal["pending", "ok", "failed"]


@dataclass(frozen=True)
class HealthCounts:
    """What one model version did on real frames since its window opened."""

    version: int
    frames: int = 0  # inferences attempted
    errors: int = 0  # inference raised
    nonfinite: int = 0  # outputs held NaN or inf
    elapsed_s: float = 0.0
    mean_confidence: float | None = None  # mean top-1 confidence of the frames that decoded
    baseline_confidence: float | None = None  # the previous model's, None when unknown


def health_verdict(c: HealthCounts, cfg: HealthConfig) -> tuple[Verdict, str]:
    """(state, reason) of a health window; the reason is for people (Status.detail)."""
    denom = max(c.frames, cfg.min_frames)
    if c.errors > cfg.max_error_rate * denom:
        return "failed", (f"{c.errors} inference error(s) in {c.frames} frame(s), "
                          f"more than max_error_rate {cfg.max_error_rate:g} allows")
    if c.nonfinite > cfg.max_nonfinite_rate * denom:
        return "failed", (f"{c.nonfinite} of {c.frames} frame(s) gave NaN/inf outputs, "
                          f"more than max_nonfinite_rate {cfg.max_nonfinite_rate:g} allows")
    if c.frames < cfg.min_frames or c.elapsed_s < cfg.window_s:
        return "pending", (f"health window: {c.frames}/{cfg.min_frames} frames, "
                           f"{min(c.elapsed_s, cfg.window_s):.0f}/{cfg.window_s:.0f} s")
    if c.mean_confidence is not None and c.baseline_confidence is not None \
            and c.mean_confidence < (1.0 - cfg.max_confidence_drop) * c.baseline_confidence:
        return "failed", (f"mean confidence {c.mean_confidence:.2f} against {c.baseline_confidence:.2f} on the "
                          f"previous model, a drop of more than max_confidence_drop {cfg.max_confidence_drop:g}")
    conf = f", mean confidence {c.mean_confidence:.2f}" if c.mean_confidence is not None else ""
    return "ok", (f"{c.frames} frames in {c.elapsed_s:.0f} s: {c.errors} errors, "
                  f"{c.nonfinite} non-finite{conf}")


@dataclass
class _Tally:
    frames: int = 0
    errors: int = 0
    nonfinite: int = 0
    conf_sum: float = 0.0
    conf_n: int = 0

    def mean(self) -> float | None:
        return self.conf_sum / self.conf_n if self.conf_n else None


class HealthWindow:
    """Per-version outcome counts (thread-safe), and the one version on probation, if any."""

    KEEP = 4  # versions whose tallies are kept (the running one, its predecessor, a few spare)

    def __init__(self, cfg: HealthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self._lock = threading.Lock()
        self._tallies: dict[int, _Tally] = {}
        self._probation: int | None = None
        self._opened = 0.0
        self._baseline: float | None = None

    def record(self, version: int, outcome: Outcome, confidence: float | None = None) -> None:
        """One frame's outcome; called from the inference loop, so it only counts."""
        with self._lock:
            t = self._tallies.get(version)
            if t is None:
                t = self._tallies[version] = _Tally()
                for old in sorted(self._tallies)[:-self.KEEP]:
                    if old != self._probation:
                        del self._tallies[old]
            t.frames += 1
            if outcome == "error":
                t.errors += 1
            elif outcome == "nonfinite":
                t.nonfinite += 1
            elif confidence is not None:
                t.conf_sum += confidence
                t.conf_n += 1

    def begin(self, version: int, previous: int | None) -> None:
        """Open the window of ``version``; ``previous`` gives the confidence baseline when it ran long enough."""
        with self._lock:
            before = self._tallies.get(previous) if previous is not None else None
            self._baseline = before.mean() if before is not None and before.conf_n >= self.cfg.min_frames else None
            self._tallies[version] = _Tally()
            self._probation = version
            self._opened = self.clock()

    def end(self) -> None:
        with self._lock:
            self._probation = None

    @property
    def probation(self) -> int | None:
        with self._lock:
            return self._probation

    def counts(self) -> HealthCounts | None:
        """The counts of the version on probation, or None when no window is open."""
        with self._lock:
            v = self._probation
            if v is None:
                return None
            t = self._tallies.get(v, _Tally())
            return HealthCounts(v, t.frames, t.errors, t.nonfinite, self.clock() - self._opened, t.mean(),
                                self._baseline)

    def verdict(self) -> tuple[int, Verdict, str] | None:
        c = self.counts()
        if c is None:
            return None
        state, reason = health_verdict(c, self.cfg)
        return c.version, state, reason
