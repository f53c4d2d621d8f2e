"""trainer.selection: the batch-aware strategies on seeded synthetic clusters (numpy only, no torch)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from trainer import selection
from trainer.selection import Params, Pool, SelectionError, queue_order, select


def clusters(n_clusters: int = 5, per: int = 40, dim: int = 16, spread: float = 0.3, seed: int = 0):
    """Well separated gaussian blobs: embeddings, cluster id per row, the blob centres."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(n_clusters, dim)) * 3.0
    x = np.concatenate([c + g.normal(size=(per, dim)) * spread for c in centres])
    return x, np.repeat(np.arange(n_clusters), per), centres


def test_diverse_covers_clusters_that_top_k_misses():
    x, cl, _ = clusters()
    # Cluster 0 is a block of near-duplicate confusions: each of its frames is slightly more uncertain
    # than anything else, so the top 5 are all from it.
    u = np.where(cl == 0, 0.9, 0.8) + np.random.default_rng(1).uniform(0, 0.01, len(cl))
    pool = Pool(u, x, n_classes=5)
    top = {int(cl[p.index]) for p in select("uncertain", pool, 5, random.Random(0))}
    picks = select("diverse", pool, 5, random.Random(0), Params(candidates=40))  # every frame a candidate
    assert top == {0}
    assert len({int(cl[p.index]) for p in picks}) >= 4
    assert "diverse" in picks[1].reason and "uncertain" in picks[1].reason


def test_diverse_prefers_uncertain_candidates():
    x, cl, _ = clusters()
    u = np.where(cl < 2, 0.9, 0.01)  # clusters 2-4 are confidently right: not worth a label
    picks = select("diverse", Pool(u, x, n_classes=5), 6, random.Random(3), Params(candidates=10))
    assert sum(cl[p.index] < 2 for p in picks) >= 5


def test_badge_gradient_embeddings_grow_with_uncertainty():
    h = np.ones((2, 3))
    probs = np.array([[0.98, 0.02], [0.55, 0.45]])
    g = selection.gradient_embeddings(h, probs)
    assert g.shape == (2, 6)
    assert np.linalg.norm(g[1]) > 10 * np.linalg.norm(g[0])


def test_typical_picks_cluster_centres_not_outliers():
    x, cl, centres = clusters(per=30)
    outliers = np.random.default_rng(9).normal(size=(5, 16)) * 8.0  # isolated points far from every blob
    x = np.concatenate([x, outliers])
    cl = np.concatenate([cl, np.full(5, -1)])
    pool = Pool(np.zeros(len(x)), x, n_classes=5)
    picks = select("typical", pool, 5, random.Random(0))
    got = [int(p.index) for p in picks]
    assert sorted(cl[got]) == [0, 1, 2, 3, 4]  # one per dense region, no outlier
    xn = selection.normalize(x)
    for i in got:
        same = np.flatnonzero(cl == cl[i])
        centre = selection.normalize(xn[same].mean(0, keepdims=True))[0]
        dist = np.linalg.norm(xn[same] - centre, axis=1)
        assert dist[list(same).index(i)] <= np.quantile(dist, 0.25)  # among the most central quarter


def test_typical_skips_clusters_already_labelled():
    x, cl, _ = clusters(per=30)
    labelled = x[cl == 2][:3]
    picks = select("typical", Pool(np.zeros(len(x)), x, labelled=labelled, n_labelled=3, n_classes=5),
                   4, random.Random(0))
    assert 2 not in {int(cl[p.index]) for p in picks}


def test_cold_start_hands_over_from_typical_to_uncertainty():
    x, cl, _ = clusters()
    u = np.where(cl == 0, 0.9, 0.1)
    weak = Pool(u, x, n_labelled=0, n_classes=5)
    strong = Pool(u, x, n_labelled=50, n_classes=5)
    half = Pool(u, x, n_labelled=25, n_classes=5)
    assert selection.weak_share(weak) == 1.0 and selection.weak_share(strong) == 0.0
    assert all(p.reason.startswith("typical") for p in select("cold_start", weak, 6, random.Random(0)))
    assert all("diverse" in p.reason for p in select("cold_start", strong, 6, random.Random(0)))
    mixed = select("cold_start", half, 6, random.Random(0))
    assert sum(p.reason.startswith("typical") for p in mixed) == 3
    assert len({p.index for p in mixed}) == 6
    accurate = Pool(u, x, n_labelled=0, n_classes=5, accuracy=0.95)
    assert selection.weak_share(accurate) == 0.0


def test_strategies_are_deterministic_given_the_rng():
    x, cl, _ = clusters()
    u = np.random.default_rng(2).uniform(size=len(cl))
    pool = Pool(u, x, labelled=x[:4], n_labelled=4, n_classes=5)
    for name in selection.STRATEGIES:
        a = [p.index for p in select(name, pool, 7, random.Random(42))]
        b = [p.index for p in select(name, pool, 7, random.Random(42))]
        assert a == b and len(set(a)) == 7, name


def test_k_larger_than_the_pool_and_copies():
    x = np.ones((4, 3))  # four identical frames
    picks = select("diverse", Pool(np.full(4, 0.5), x), 10, random.Random(0))
    assert sorted(p.index for p in picks) == [0, 1, 2, 3]
    assert select("typical", Pool(np.zeros(4), x), 10, random.Random(0))


def test_bad_inputs_are_refused():
    with pytest.raises(SelectionError, match="embeddings"):
        select("diverse", Pool(np.zeros(3)), 2, random.Random(0))
    with pytest.raises(SelectionError, match="unknown"):
        select("nope", Pool(np.zeros(3)), 2, random.Random(0))
    with pytest.raises(SelectionError, match="shape"):
        Pool(np.zeros(3), np.zeros((2, 4)))


def test_queue_order_spreads_near_duplicates_and_falls_back_without_embeddings():
    x, cl, _ = clusters(n_clusters=3, per=10)
    value = np.where(cl == 0, 0.9, 0.6)
    order = [i for i, _ in queue_order(value, x, np.ones(len(x), bool))]
    assert len({int(cl[i]) for i in order[:3]}) == 3  # one of each cluster before a second of cluster 0
    by_value = [i for i, _ in queue_order(value, None)]
    assert by_value == sorted(range(len(x)), key=lambda i: (-value[i], i))
    # Embeddings from different models are not compared: each group is diversified on its own.
    groups = np.where(np.arange(len(x)) % 2 == 0, 1, 2)
    mixed = queue_order(value, x, np.ones(len(x), bool), groups)
    assert mixed[1][1] == 1.0


def test_queue_order_puts_the_given_items_ahead_and_counts_them():
    x, cl, _ = clusters(n_clusters=3, per=10)
    value = np.where(cl == 0, 0.9, 0.6)
    ahead = [int(np.flatnonzero(cl == 1)[0]), int(np.flatnonzero(cl == 2)[0])]  # e.g. the cold start's picks
    order = queue_order(value, x, np.ones(len(x), bool), ahead=ahead)
    assert [i for i, _ in order[:2]] == ahead and order[0][1] == math.inf
    assert cl[order[2][0]] == 0  # the only region with nothing ahead comes next, not a second of 1 or 2
    assert sorted(i for i, _ in order) == list(range(len(x)))
    without = [i for i, _ in queue_order(value, x, np.ones(len(x), bool))]
    assert without[0] not in ahead and cl[without[0]] == 0  # without them the most valuable leads
    for bad in ([0, 0], [len(x)], [-1]):
        with pytest.raises(SelectionError, match="ahead"):
            queue_order(value, x, np.ones(len(x), bool), ahead=bad)


def test_typical_says_whether_its_region_holds_labels():
    x, cl, _ = clusters(n_clusters=3, per=20)
    picks = select("typical", Pool(np.zeros(len(x)), x, labelled=x[cl == 0][:2], n_labelled=2), 4, random.Random(0))
    assert all(p.reason.startswith("typical: centre of a dense region of") for p in picks)
    assert picks[0].reason.endswith("with no labels yet")
    everywhere = select("typical", Pool(np.zeros(len(x)), x, labelled=x, n_labelled=len(x)), 2, random.Random(0))
    assert all(p.reason.endswith("labelled or picked") for p in everywhere)  # every region holds labels
