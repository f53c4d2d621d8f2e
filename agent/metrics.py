"""Health figures: counters, latency percentiles, fps, confidence histograms.

The maths are pure functions; the small classes only hold a window of recent
values behind a lock, because capture, inference and uplink threads all
report into them.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from protocol import HIST_BINS


def percentile(values: list[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (0..100), 0.0 for no values."""
    if len(values) == 0:
        return 0.0
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def hist_bin(confidence: float, bins: int = HIST_BINS) -> int:
    """Bin of a confidence in [0, 1] over ``bins`` equal bins (1.0 goes in the last one)."""
    return min(bins - 1, max(0, int(confidence * bins)))


class Counters:
    """Named monotonic counters, e.g. drops by reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class LatencyWindow:
    """The last ``size`` latencies, for p50/p99 in telemetry."""

    def __init__(self, size: int = 2048) -> None:
        self._lock = threading.Lock()
        self._values: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)

    def percentiles_ms(self) -> tuple[float, float]:
        with self._lock:
            values = list(self._values)
        return percentile(values, 50) * 1000, percentile(values, 99) * 1000


class RateMeter:
    """Events per second over a sliding window of ``window_s``."""

    def __init__(self, window_s: float = 10.0, clock=time.monotonic) -> None:
        self._lock = threading.Lock()
        self._times: deque[float] = deque()
        self.window_s = window_s
        self.clock = clock

    def tick(self) -> None:
        now = self.clock()
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()

    def rate(self) -> float:
        now = self.clock()
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], 1e-6)
            return len(self._times) / span


class ConfidenceHistogram:
    """Per top-1 label, counts of top-1 confidence in HIST_BINS bins since start."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bins: dict[str, list[int]] = {}

    def add(self, label: str, confidence: float) -> None:
        with self._lock:
            bins = self._bins.setdefault(label, [0] * HIST_BINS)
            bins[hist_bin(confidence)] += 1

    def snapshot(self) -> dict[str, tuple[int, ...]]:
        with self._lock:
            return {k: tuple(v) for k, v in self._bins.items()}
