"""Pure functions: the error queue's expected value, its batch-aware order, near-duplicate clusters.

The queue's first ``WINDOW`` items are the best expected values reordered by
``trainer.selection.queue_order``: each next item maximises expected value ×
distance (in the agents' embedding space) to the items ahead of it, so a
reviewer's next page spreads over different confusions instead of forty
near-copies of one. Items without an embedding (older agents, third-party
models) count as unlike everything, so without embeddings the order is the
expected value's.

Cold start (``QueueConfig``, the server's ``[queue]`` table): while the model
is weak (``Strength``: few labels per class, or a known validation accuracy
below ``weak_accuracy``; ``trainer.selection.weak_share``'s rule), that share
of a review batch goes first to ``trainer.selection.typical`` picks: the most
typical members of dense regions of the window's embeddings that hold no
labelled example yet (TypiClust). The value × distance order follows,
counting them as ahead. No I/O, no threads.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from protocol.embedding import dequantize_embedding
from protocol.errors import ProtocolError
from trainer.selection import Params, Pool, queue_order, typical, weak_share

WINDOW = 200  # queue items reordered for diversity; the rest follow by expected value
LABELLED_MAX = 200  # newest labelled embeddings the cold start clusters with: its k-means stays window-sized
COLD_START_SEED = 0  # one fixed seed: every page request must see the same order


class QueueConfig(BaseModel):
    """The server's ``[queue]`` table: when the review queue's cold start puts typical items first."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cold_start: bool = True
    labels_per_class: int = Field(10, ge=1, le=100_000)  # weak until this many labels per class
    weak_accuracy: float = Field(0.8, ge=0.0, le=1.0)  # a known validation accuracy this high ends it at once


ModelKey = tuple[str | None, int | None]  # (model name, version): embeddings of different models are not comparable


@dataclass(frozen=True)
class Strength:
    """What the store knows about how weak the current model is: the cold start's inputs."""

    n_labelled: int  # labels: images (classification) or objects (detection)
    n_classes: int
    batch: int  # the project's review batch; the cold start's share is of this many items
    accuracy: float | None = None  # the newest round's validation accuracy, when known
    labelled: tuple[tuple[ModelKey, bytes], ...] = ()  # labelled examples' embeddings, by the model that made them


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
    model: ModelKey
    uncertainty: float | None
    strategy: str | None


def _vector(raw: bytes | None) -> np.ndarray | None:
    try:
        return dequantize_embedding(raw) if raw else None
    except ProtocolError:
        return None  # a malformed column is no embedding, not a failed queue


def _vectors(cands: list[Candidate]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[tuple, int]]:
    """Embeddings zero-padded to one width, which rows have one, a group per (model, dimension), the groups' keys."""
    vecs = [_vector(c.embedding) for c in cands]
    width = max((len(v) for v in vecs if v is not None), default=1)
    emb = np.zeros((len(cands), width))
    keys: dict[tuple, int] = {}
    groups = np.zeros(len(cands), int)
    for i, (c, v) in enumerate(zip(cands, vecs)):
        if v is not None:
            emb[i, :len(v)] = v
            groups[i] = keys.setdefault((c.model, len(v)), len(keys))
    return emb, np.array([v is not None for v in vecs]), groups, keys


def _params(config: QueueConfig) -> Params:
    return Params(labels_per_class=config.labels_per_class, weak_accuracy=config.weak_accuracy)


def cold_share(strength: Strength, config: QueueConfig = QueueConfig()) -> float:
    """The share of a review batch the cold start gives to typical items (``selection.weak_share``); 0 when off."""
    if not config.cold_start:
        return 0.0
    pool = Pool(np.zeros(0), n_labelled=strength.n_labelled, n_classes=max(1, strength.n_classes),
                accuracy=strength.accuracy)
    return weak_share(pool, _params(config))


def _phase(strength: Strength, config: QueueConfig) -> str:
    c = max(1, strength.n_classes)
    out = (f"cold start: {strength.n_labelled} of {config.labels_per_class * c} labels"
           f" ({config.labels_per_class} per class × {c} classes)")
    if strength.accuracy is not None:
        out += f", validation accuracy {strength.accuracy:.2f} < {config.weak_accuracy:.2f}"
    return out


def _quotas(k: int, sizes: dict[int, int]) -> dict[int, int]:
    """``k`` split over groups in proportion to their sizes (largest remainders), largest group first."""
    total = sum(sizes.values())
    exact = {g: k * n / total for g, n in sizes.items()}
    quota = {g: int(x) for g, x in exact.items()}
    for g in sorted(sizes, key=lambda g: (quota[g] - exact[g], -sizes[g], g))[:k - sum(quota.values())]:
        quota[g] += 1
    return {g: min(q, sizes[g]) for g, q in quota.items()}


def _typical_first(emb: np.ndarray, has: np.ndarray, groups: np.ndarray, keys: dict[tuple, int],
                   strength: Strength, config: QueueConfig) -> list[tuple[int, str]]:
    """The cold start's picks, ``(row, reason)``: ``typical`` in each embedding group, interleaved by rank.

    Each group is clustered with the labelled embeddings of the same model and dimension only; a
    labelled example from another model (an older version) cannot say which of this model's regions
    it covers.
    """
    k = min(int(round(strength.batch * cold_share(strength, config))), int(has.sum()))
    if k <= 0:
        return []
    labelled: dict[int, list[np.ndarray]] = defaultdict(list)
    for model, raw in strength.labelled:
        v = _vector(raw)
        if v is not None and (model, len(v)) in keys:
            labelled[keys[(model, len(v))]].append(v)
    sizes = {g: int((has & (groups == g)).sum()) for g in keys.values()}
    phase, ranked = _phase(strength, config), []
    for g, quota in _quotas(k, sizes).items():
        rows = np.flatnonzero(has & (groups == g))
        dim = next(d for (_, d), j in keys.items() if j == g)
        lab = np.array(labelled[g]) if labelled[g] else None
        picks = typical(Pool(np.zeros(len(rows)), emb[rows, :dim], labelled=lab), quota,
                        random.Random(COLD_START_SEED), _params(config)) if quota else []
        ranked += [(rank, -sizes[g], g, int(rows[p.index]), f"{p.reason} ({phase})") for rank, p in enumerate(picks)]
    return [(row, why) for *_, row, why in sorted(ranked)]


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


def diverse_order(cands: list[Candidate], strength: Strength | None = None,
                  config: QueueConfig = QueueConfig()) -> list[tuple[int, str]]:
    """``(example id, why it is here)`` for ``cands`` (given best expected value first), most useful set first.

    With ``strength`` (what the store knows about the model) a weak model's cold start puts typical
    items first; without it, or once the model is strong, the order is value × distance alone.
    """
    if not cands:
        return []
    emb, has, groups, keys = _vectors(cands)
    first = _typical_first(emb, has, groups, keys, strength, config) if strength is not None else []
    why_first = dict(first)
    values = np.array([max(c.value, 0.0) for c in cands])
    order = queue_order(values, emb, has, groups, ahead=[row for row, _ in first])
    return [(cands[i].id, why_first[i] if i in why_first else _why(cands[i], pos, d, bool(has[i])))
            for pos, (i, d) in enumerate(order)]
