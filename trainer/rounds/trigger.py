"""When does the next training round start? A pure decision over counts.

The seed's practice: add 30 to 50 corrected errors per iteration, then
retrain. Corrections that arrive while a round runs count towards the next
one, because the store counts corrections labelled after the last round
started (``Store.corrected_since_last_round``).
"""

from __future__ import annotations

from dataclasses import dataclass

BATCH_MIN, BATCH_MAX, BATCH_DEFAULT = 30, 50, 40


@dataclass(frozen=True)
class TriggerDecision:
    start: bool
    reason: str
    corrected: int
    batch_size: int


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not BATCH_MIN <= batch_size <= BATCH_MAX:
        raise ValueError(f"batch size must be an integer from {BATCH_MIN} to {BATCH_MAX}, got {batch_size!r}")
    return batch_size


def decide(corrected: int, batch_size: int = BATCH_DEFAULT, running: bool = False) -> TriggerDecision:
    """Start a round when ``corrected`` reaches ``batch_size`` and none is running."""
    check_batch_size(batch_size)
    if corrected < 0:
        raise ValueError(f"corrected must be >= 0, got {corrected}")
    if running:
        return TriggerDecision(False, "a round is running; new corrections count towards the next one",
                               corrected, batch_size)
    if corrected < batch_size:
        return TriggerDecision(False, f"{corrected} of {batch_size} corrected examples", corrected, batch_size)
    return TriggerDecision(True, f"{corrected} corrected examples reached the batch of {batch_size}",
                           corrected, batch_size)
