"""Capped exponential backoff with full jitter, for reconnect loops.

Jitter matters on a fleet: after a broker restart, a hundred agents that all
wait exactly 1, 2, 4 s reconnect in lockstep and knock it over again.
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): uniform in [base/2, min(cap, base * 2**attempt)]."""
    ceiling = min(cap_s, base_s * (2 ** min(attempt, 30)))
    return rng.uniform(min(base_s / 2, ceiling), ceiling)


class Backoff:
    """Stateful wrapper: ``next()`` after a failure, ``reset()`` after a success."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng
        self.attempt = 0

    def next(self) -> float:
        delay = backoff_delay(self.attempt, self.base_s, self.cap_s, self.rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
