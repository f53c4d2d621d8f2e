"""Pure functions: the error queue's expected value, its batch-aware order, near-duplicate clusters.

The queue's first ``WINDOW`` items are the best expected values reordered by
``trainer.selection.queue_order``: each next item maximises expected value ×
distance (in the agents' embedding space) to the items ahead of it, so a
reviewer's next page spreads over different confusions instead of forty
near-copies of one. Items without an embedding (older agents, third-party
models) count as unlike everything, so without embeddings the order is the
expected value's. No I/O, no threads.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from protocol.embedding import dequantize_embedding
from protocol.errors import ProtocolError
from trainer.selection import queue_order

WINDOW = 200  # queue items reordered for diversity; the rest follow by expected value


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


@dataclass(frozen=True)
class Candidate:
    """A pending item as the queue order sees it."""

    id: int
    value: float  # expected_value
    embedding: bytes | None  # protocol.embedding bytes, None without
    model: tuple[str | None, int | None]  # embeddings of different models are not comparable
    uncertainty: float | None
    strategy: str | None


def _vectors(cands: list[Candidate]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings zero-padded to one width, which rows have one, and a group per (model, dimension)."""
    vecs: list[np.ndarray | None] = []
    for c in cands:
        try:
            vecs.append(dequantize_embedding(c.embedding) if c.embedding else None)
        except ProtocolError:
            vecs.append(None)  # a malformed column is no embedding, not a failed queue
    width = max((len(v) for v in vecs if v is not None), default=1)
    emb = np.zeros((len(cands), width))
    keys: dict[tuple, int] = {}
    groups = np.zeros(len(cands), int)
    for i, (c, v) in enumerate(zip(cands, vecs)):
        if v is not None:
            emb[i, :len(v)] = v
            groups[i] = keys.setdefault((c.model, len(v)), len(keys))
    return emb, np.array([v is not None for v in vecs]), groups


def _why(c: Candidate, position: int, distance: float, has: bool) -> str:
    u = f"uncertain ({c.strategy or 'score'} {c.uncertainty:.2f})" if c.uncertainty is not None else \
        "no edge uncertainty"
    if position == 0:
        return f"{u}, best expected value {c.value:.2f}"
    if not has:
        return f"{u}, expected value {c.value:.2f} (no embedding to compare)"
    if distance >= 1.0:
        return f"{u}, diverse: unlike all {position} ahead"
    return f"{u}, diverse: distance {distance:.2f} from the nearest of {position} ahead"


def diverse_order(cands: list[Candidate]) -> list[tuple[int, str]]:
    """``(example id, why it is here)`` for ``cands`` (given best expected value first), most useful set first."""
    if not cands:
        return []
    emb, has, groups = _vectors(cands)
    values = np.array([max(c.value, 0.0) for c in cands])
    return [(cands[i].id, _why(cands[i], pos, d, bool(has[i])))
            for pos, (i, d) in enumerate(queue_order(values, emb, has, groups))]
