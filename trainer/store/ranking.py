"""Pure functions: the error queue's expected value and near-duplicate clusters."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Weights:
    """How much each reason to review counts; the sum is the best possible score."""

    uncertainty: float = 0.6
    rarity: float = 0.3
    freshness: float = 0.1
    freshness_half_life_s: float = 86_400.0


def expected_value(uncertainty: float, class_count: int, max_class_count: int, age_s: float,
                   w: Weights = Weights()) -> float:
    """Score a pending sample: uncertain, of a rare predicted class, and recent first.

    ``uncertainty`` is clamped to [0, 1] (every agent strategy reports in that
    range; anything above is treated as maximally uncertain). Rarity is 1 for
    a class with no labelled examples and 0 for the most common class. Recent
    samples come from the model and scene that matter now, so freshness
    halves every ``freshness_half_life_s``.
    """
    u = min(max(uncertainty, 0.0), 1.0)
    rarity = 1.0 - (class_count / max_class_count if max_class_count > 0 else 0.0)
    fresh = math.exp(-math.log(2) * max(age_s, 0.0) / w.freshness_half_life_s)
    return w.uncertainty * u + w.rarity * rarity + w.freshness * fresh


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & 0xFFFFFFFFFFFFFFFF).bit_count()


def duplicate_clusters(hashes: list[tuple[int, int]], max_distance: int = 4) -> list[list[int]]:
    """Group ids whose 64-bit hashes differ in at most ``max_distance`` bits.

    Pigeonhole: two hashes within ``max_distance`` bits agree exactly on at
    least one of ``max_distance + 1`` bands, so only ids sharing a band value
    are compared (near-linear instead of quadratic).
    """
    bands = max_distance + 1
    width = 64 // bands
    parent = {i: i for i, _ in hashes}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    value = dict(hashes)
    for band in range(bands):
        shift = band * width
        mask = (1 << (64 - shift if band == bands - 1 else width)) - 1
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, h in hashes:
            buckets[((h & 0xFFFFFFFFFFFFFFFF) >> shift) & mask].append(i)
        for members in buckets.values():
            for k, a in enumerate(members):
                for b in members[k + 1:]:
                    if find(a) != find(b) and hamming(value[a], value[b]) <= max_distance:
                        parent[find(a)] = find(b)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, _ in hashes:
        groups[find(i)].append(i)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))
