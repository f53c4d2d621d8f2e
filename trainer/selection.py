"""Batch-aware selection: which set of unlabelled examples to label next.

Shared by ``edgeloop replay`` (``trainer.replay``) and the server's review
queue (``trainer.store.review``); needs only numpy, so the store can import it
without torch. Every strategy is a pure function in the ``STRATEGIES`` table,
``fn(pool, k, rng, params) -> list[Pick]``, with randomness passed in as a
``random.Random``. No threads, no I/O, nothing to wait on.

- ``uncertain``: the ``k`` highest uncertainty scores (the agent's ranking).
- ``diverse``: among the most uncertain candidates, a batch that covers the
  embedding space. With class probabilities it is BADGE (Ash et al. 2020):
  k-means++ seeding over gradient embeddings ``(p - onehot(argmax p)) ⊗ h``,
  whose norm grows with uncertainty; without them, k-means++ over the
  L2-normalised embeddings scaled by uncertainty. Near-copies of one confusion
  are one pick, not forty.
- ``typical``: TypiClust (Hacohen et al. 2022): cluster labelled and
  unlabelled embeddings into ``labelled + k`` clusters and take the most
  typical member (densest neighbourhood) of the largest clusters that hold
  no label yet. What a weak model needs first: representatives, not outliers.
- ``cold_start``: ``typical`` while the model is weak, handing over to
  ``diverse`` as labels accumulate (a share of the batch that shrinks
  linearly to zero at ``labels_per_class`` labels per class) or at once when
  the known accuracy passes ``weak_accuracy``.
- ``queue_order`` (not in the table: it orders a whole queue instead of
  picking a batch): greedy value × distance to what is already ahead, after
  any items the caller puts ahead (the server's cold start: ``typical``
  picks for ``weak_share`` of a review batch, ``trainer.store.ranking``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

EPS = 1e-12


class SelectionError(ValueError):
    """Inputs a strategy cannot use (shapes that disagree, a strategy that needs embeddings without them)."""


@dataclass(frozen=True)
class Pool:
    """What a strategy may look at; row ``i`` of every array is candidate ``i``.

    ``uncertainty``: higher is more useful to label, ``-inf`` where the
    uncertainty strategy does not apply. ``embeddings``: penultimate features
    ``[n, d]``. ``probabilities``: class probabilities ``[n, C]``
    (classification). ``labelled``: embeddings of examples already labelled
    ``[m, d]``. ``accuracy``: the current model's validation accuracy, when known.
    """

    uncertainty: np.ndarray
    embeddings: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    labelled: np.ndarray | None = None
    n_labelled: int = 0
    n_classes: int = 2
    accuracy: float | None = None
    uncertainty_name: str = "uncertainty"

    def __post_init__(self) -> None:
        n = len(self.uncertainty)
        for name in ("embeddings", "probabilities"):
            a = getattr(self, name)
            if a is not None and (a.ndim != 2 or len(a) != n):
                raise SelectionError(f"{name} must be [n={n}, d], got shape {a.shape}")
        if self.labelled is not None and self.embeddings is not None and \
                (self.labelled.ndim != 2 or self.labelled.shape[1] != self.embeddings.shape[1]):
            raise SelectionError(f"labelled embeddings {self.labelled.shape} do not match {self.embeddings.shape}")


@dataclass(frozen=True)
class Pick:
    index: int
    reason: str  # for people: why this one was picked


@dataclass(frozen=True)
class Params:
    candidates: int = 10  # diverse: look at the k * candidates most uncertain
    labels_per_class: int = 10  # cold_start: weak until this many labels per class
    weak_accuracy: float = 0.8  # cold_start: a known accuracy above this ends the cold start
    min_cluster: int = 5  # typical: smaller clusters are outliers, not regions
    knn: int = 20  # typical: neighbours in the typicality estimate
    max_clusters: int = 500
    kmeans_iters: int = 20


def _np_rng(rng: random.Random) -> np.random.Generator:
    return np.random.default_rng(rng.getrandbits(63))


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared euclidean distances ``[len(x), len(c)]``, clipped at 0 against rounding."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans_pp(vectors: np.ndarray, k: int, rng: random.Random) -> list[tuple[int, float]]:
    """k-means++ seeding as BADGE uses it: the largest vector first, then draws ∝ squared distance.

    Returns ``(index, distance to the nearest earlier pick)`` pairs. Exact
    duplicates of a pick have distance 0 and are never drawn while anything
    else is left.
    """
    n = len(vectors)
    k = min(k, n)
    if k <= 0:
        return []
    gen = _np_rng(rng)
    first = int(np.argmax((vectors * vectors).sum(1)))
    out = [(first, math.inf)]
    d2 = _sq_dist(vectors, vectors[first:first + 1])[:, 0]
    d2[first] = 0.0
    while len(out) < k:
        total = d2.sum()
        if total <= EPS:  # only copies of picks are left: take them in order
            rest = [i for i in range(n) if i not in {j for j, _ in out}]
            out += [(i, 0.0) for i in rest[:k - len(out)]]
            break
        i = int(gen.choice(n, p=d2 / total))
        out.append((i, float(math.sqrt(d2[i]))))
        d2 = np.minimum(d2, _sq_dist(vectors, vectors[i:i + 1])[:, 0])
        d2[i] = 0.0
    return out


def kmeans(x: np.ndarray, k: int, rng: random.Random, iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means from a k-means++ start: ``(assignment [n], centres [k, d])``."""
    k = min(k, len(x))
    gen = _np_rng(rng)
    centres = [x[int(gen.integers(len(x)))]]
    d2 = _sq_dist(x, centres[0][None])[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        i = int(gen.choice(len(x), p=d2 / total)) if total > EPS else int(gen.integers(len(x)))
        centres.append(x[i])
        d2 = np.minimum(d2, _sq_dist(x, x[i:i + 1])[:, 0])
    c = np.array(centres)
    assign = np.zeros(len(x), int)
    for it in range(iters):
        new = np.argmin(_sq_dist(x, c), axis=1)
        if it and np.array_equal(new, assign):
            break
        assign = new
        for j in range(len(c)):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return assign, c


def typicality(x: np.ndarray, knn: int) -> np.ndarray:
    """TypiClust's typicality: the inverse mean distance to the ``knn`` nearest neighbours (self excluded)."""
    if len(x) < 2:
        return np.ones(len(x))
    d = np.sqrt(_sq_dist(x, x))
    np.fill_diagonal(d, np.inf)
    kk = min(knn, len(x) - 1)
    near = np.sort(d, axis=1)[:, :kk]
    return 1.0 / (near.mean(1) + EPS)


def _fmt_u(pool: Pool, i: int) -> str:
    u = pool.uncertainty[i]
    return f"uncertain ({pool.uncertainty_name} {u:.2f})" if np.isfinite(u) else "not scored"


def _order_uncertain(pool: Pool, rng: random.Random) -> list[int]:
    """Indices by uncertainty, highest first; ties broken by ``rng`` (not by position)."""
    order = list(range(len(pool.uncertainty)))
    rng.shuffle(order)
    u = pool.uncertainty
    order.sort(key=lambda i: -u[i] if np.isfinite(u[i]) else math.inf)
    return order


def uncertain(pool: Pool, k: int, rng: random.Random, params: Params = Params()) -> list[Pick]:
    """The ``k`` most uncertain, one by one: the agent's ranking as a batch."""
    return [Pick(i, _fmt_u(pool, i)) for i in _order_uncertain(pool, rng)[:k]]


def _need_embeddings(pool: Pool, name: str) -> np.ndarray:
    if pool.embeddings is None:
        raise SelectionError(f"strategy {name!r} needs embeddings")
    return np.asarray(pool.embeddings, np.float64)


def gradient_embeddings(embeddings: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """BADGE's last-layer gradient for the predicted label: ``(p - onehot(argmax p)) ⊗ h``, flattened."""
    p = np.asarray(probabilities, np.float64)
    g = p.copy()
    g[np.arange(len(p)), np.argmax(p, 1)] -= 1.0
    return (g[:, :, None] * np.asarray(embeddings, np.float64)[:, None, :]).reshape(len(p), -1)


def diverse(pool: Pool, k: int, rng: random.Random, params: Params = Params(),
            exclude: frozenset[int] = frozenset()) -> list[Pick]:
    """Among the ``k * candidates`` most uncertain, k-means++ picks a batch that covers the space."""
    emb = _need_embeddings(pool, "diverse")
    order = [i for i in _order_uncertain(pool, rng) if i not in exclude]
    scored = [i for i in order if np.isfinite(pool.uncertainty[i])]
    cand = (scored or order)[:max(k, k * params.candidates)]
    if not cand:
        return []
    if pool.probabilities is not None:
        vec = gradient_embeddings(emb[cand], pool.probabilities[cand])
    else:
        u = pool.uncertainty[cand]
        w = np.where(np.isfinite(u), u, 0.0)
        w = w - min(0.0, float(w.min()))  # scores are "higher is better"; only their order may be signed
        vec = normalize(emb[cand]) * (w[:, None] + EPS)
    picks = []
    for n, (j, dist) in enumerate(kmeans_pp(vec, k, rng)):
        why = "diverse: first pick, largest gradient" if n == 0 else \
            f"diverse: distance {dist:.2f} from {n} picked"
        picks.append(Pick(cand[j], f"{_fmt_u(pool, cand[j])}, {why}"))
    return picks


def typical(pool: Pool, k: int, rng: random.Random, params: Params = Params()) -> list[Pick]:
    """TypiClust: the most typical member of each of the largest clusters that hold no label yet."""
    emb = normalize(_need_embeddings(pool, "typical"))
    n = len(emb)
    lab = normalize(pool.labelled) if pool.labelled is not None and len(pool.labelled) else np.zeros((0, emb.shape[1]))
    both = np.concatenate([lab, emb])
    n_clusters = max(1, min(len(lab) + k, params.max_clusters, len(both)))
    assign, _ = kmeans(both, n_clusters, rng, params.kmeans_iters)
    covered = np.bincount(assign[:len(lab)], minlength=n_clusters).astype(int)
    sizes = np.bincount(assign, minlength=n_clusters)
    members = {c: np.flatnonzero(assign[len(lab):] == c) for c in range(n_clusters)}
    picked: list[Pick] = []
    taken: set[int] = set()
    while len(picked) < min(k, n):
        free = [c for c in range(n_clusters) if any(i not in taken for i in members[c])]
        big = [c for c in free if sizes[c] >= params.min_cluster] or free
        c = min(big, key=lambda c: (covered[c], -sizes[c], c))  # uncovered first, then the densest
        idx = np.array([i for i in members[c] if i not in taken])
        cluster = np.concatenate([lab[assign[:len(lab)] == c], emb[members[c]]])
        typ = typicality(cluster, params.knn)[-len(members[c]):]
        typ = typ[[list(members[c]).index(i) for i in idx]]
        best = int(idx[int(np.argmax(typ))])
        held = "no labels yet" if covered[c] == 0 else f"{covered[c]} labelled or picked"
        picked.append(Pick(best, f"typical: centre of a dense region of {sizes[c]} with {held}"))
        taken.add(best)
        covered[c] += 1
    return picked


def weak_share(pool: Pool, params: Params = Params()) -> float:
    """How much of a batch cold start gives to typical examples: 1 with no labels, 0 once the model is strong."""
    if pool.accuracy is not None and pool.accuracy >= params.weak_accuracy:
        return 0.0
    return float(np.clip(1.0 - pool.n_labelled / max(1, params.labels_per_class * pool.n_classes), 0.0, 1.0))


def cold_start(pool: Pool, k: int, rng: random.Random, params: Params = Params()) -> list[Pick]:
    """``typical`` for the weak model's share of the batch, ``diverse`` uncertainty for the rest."""
    n_typical = int(round(k * weak_share(pool, params)))
    first = typical(pool, n_typical, rng, params) if n_typical else []
    rest = diverse(pool, k - len(first), rng, params, exclude=frozenset(p.index for p in first))
    return first + rest


def queue_order(values: np.ndarray, embeddings: np.ndarray | None, has: np.ndarray | None = None,
                groups: np.ndarray | None = None, ahead: Sequence[int] = ()) -> list[tuple[int, float]]:
    """Order a whole queue: greedily the largest ``value × distance to everything ahead``.

    Distance is the cosine distance of L2-normalised embeddings, clipped to
    [0, 1]; between items without an embedding (``has`` False) or from
    different models (``groups`` differ: their embedding spaces are not
    comparable) it is 1, so without embeddings this is the order of
    ``values``. ``ahead``: indices placed first, in that order (the server's
    cold start puts ``typical`` picks there); the greedy order continues
    after them, its distances counting them. Returns ``(index, distance to
    the nearest item ahead)``, the first with ``inf``. Quadratic: call it on
    a window of the queue.
    """
    v = np.asarray(values, np.float64)
    n = len(v)
    ahead = [int(i) for i in ahead]
    if len(set(ahead)) != len(ahead) or any(not 0 <= i < n for i in ahead):
        raise SelectionError(f"ahead must be distinct indices below {n}, got {ahead[:10]}")
    if n == 0:
        return []
    has = np.zeros(n, bool) if has is None or embeddings is None else np.asarray(has, bool)
    groups = np.zeros(n, int) if groups is None else np.asarray(groups)
    emb = normalize(embeddings) if embeddings is not None and has.any() else np.zeros((n, 1))
    nearest = np.ones(n)
    left = np.ones(n, bool)
    out: list[tuple[int, float]] = []
    for step in range(n):
        if step < len(ahead):
            i = ahead[step]
        else:
            score = np.where(left, v * nearest, -np.inf)
            i = int(np.argmax(score))  # ties: the earlier index, i.e. the caller's order
        out.append((i, math.inf if step == 0 else float(nearest[i])))
        left[i] = False
        d = np.ones(n)
        if has[i]:
            same = has & (groups == groups[i])
            d[same] = np.clip(1.0 - emb[same] @ emb[i], 0.0, 1.0)
        nearest = np.minimum(nearest, d)
    return out


Strategy = Callable[[Pool, int, random.Random, Params], list[Pick]]
STRATEGIES: dict[str, Strategy] = {"uncertain": uncertain, "diverse": diverse, "typical": typical,
                                   "cold_start": cold_start}
NEEDS_EMBEDDINGS = frozenset({"diverse", "typical", "cold_start"})


def select(name: str, pool: Pool, k: int, rng: random.Random, params: Params = Params()) -> list[Pick]:
    """Run strategy ``name``; at most ``k`` distinct picks."""
    if name not in STRATEGIES:
        raise SelectionError(f"unknown selection strategy {name!r}; use one of {', '.join(sorted(STRATEGIES))}")
    picks = STRATEGIES[name](pool, k, rng, params)
    if len({p.index for p in picks}) != len(picks):
        raise SelectionError(f"strategy {name!r} picked an example twice")  # a bug, not bad input
    return picks
