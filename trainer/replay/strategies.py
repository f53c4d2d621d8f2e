"""Batch selection with the agent's own sampling functions.

An agent decides frame by frame whether a strategy fires; replay needs a
ranking of a whole pool. Both come from the same pure functions in
``agent.sampling.STRATEGIES``: called with permissive parameters (every
threshold wide open) a strategy scores every frame it applies to, and its
``Decision.uncertainty`` is the rank. ``random`` is a uniform draw from a
seeded ``random.Random``: the baseline active learning has to beat.

The batch-aware strategies of ``trainer.selection`` (``diverse``,
``typical``, ``cold_start``, with aliases ``badge``, ``typiclust``) pick a
whole batch at once from the same uncertainty (the agent's ``margin`` for
classification, ``threshold_band`` for detection) plus the round model's
penultimate features; ``trainer.replay.loop`` feeds them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import TypeAdapter

from agent import config as agent_config
from agent.model import EMPTY_BOXES, Prediction
from agent.sampling import STRATEGIES, Context
from trainer import selection

ALIASES = {"least": "least_confidence", "lc": "least_confidence", "band": "threshold_band",
           "count": "band_count", "badge": "diverse", "typiclust": "typical", "coldstart": "cold_start"}
RANDOM = "random"
# The batch-aware strategies replay offers (``uncertain`` is the agent ranking it already has).
BATCH = tuple(n for n in selection.STRATEGIES if n != "uncertain")
BASE_UNCERTAINTY = {"classification": "margin", "detection": "threshold_band"}


class StrategyError(ValueError):
    """A strategy name replay cannot use; the message lists what it can."""


# Thresholds that make a strategy fire on every frame it applies to; the rest
# of each strategy's parameters keep the agent's defaults.
WIDE_OPEN = {"least_confidence": {"threshold": 0.0}, "margin": {"threshold": 1.0},
             "entropy": {"threshold": 0.0}, "band_count": {"min_count": 1}}


def _wide_open(name: str) -> object:
    """The agent's own parameter model for ``name``, validated as an agent config would be.

    Band strategies keep the agent's default band: a frame only ranks if one of
    its boxes falls in it, which is the question the strategy asks.
    """
    return TypeAdapter(agent_config.StrategyConfig).validate_python({"name": name, **WIDE_OPEN.get(name, {})})


def _probe(task: str) -> Prediction:
    """A maximally unsure prediction for ``task``: any strategy for that task fires on it."""
    labels = ("a", "b")
    if task == "classification":
        return Prediction(task, labels, np.full(2, 0.5, np.float32), EMPTY_BOXES, np.zeros(0, np.float32),
                          np.zeros(0, np.int64), 0.0)
    return Prediction(task, labels, np.zeros(0, np.float32), np.array([[0.1, 0.1, 0.5, 0.5]], np.float32),
                      np.array([0.45], np.float32), np.zeros(1, np.int64), 0.5)


@dataclass(frozen=True)
class Strategy:
    name: str  # the agent's name (``random`` for the baseline), or a trainer.selection strategy
    params: object | None  # the agent strategy's parameters (for a batch strategy: its uncertainty's)
    base: str | None = None  # the agent strategy giving a batch strategy its uncertainty

    @property
    def batch_aware(self) -> bool:
        return self.name in BATCH

    def scores(self, predictions: Sequence[Prediction], rng: random.Random) -> list[float]:
        """The agent's uncertainty per prediction; frames the strategy passes over score -inf."""
        ctx = Context(previous=None, rng=rng)
        fn = STRATEGIES[self.base or self.name]
        out = []
        for pred in predictions:
            d = fn(pred, ctx, self.params)
            out.append(float("-inf") if d is None else float(d.uncertainty))
        return out

    def pick(self, predictions: Sequence[Prediction], k: int, rng: random.Random) -> list[int]:
        """Indices of the ``k`` frames to label next: the top scores, ties broken by ``rng``."""
        n = len(predictions)
        k = min(k, n)
        if self.name == RANDOM:
            return sorted(rng.sample(range(n), k))
        order = list(range(n))
        rng.shuffle(order)  # a seeded tie-break, so equal scores do not favour file order
        scores = self.scores(predictions, rng)
        order.sort(key=lambda i: -scores[i])  # stable: keeps the shuffled order among ties
        return sorted(order[:k])

    def pick_batch(self, predictions: Sequence[Prediction], embeddings: np.ndarray, labelled: np.ndarray,
                   k: int, rng: random.Random) -> list[int]:
        """A batch-aware pick: the agent's uncertainty plus penultimate features of pool and labelled set."""
        u = np.array(self.scores(predictions, rng), np.float64)
        task = predictions[0].task if predictions else "classification"
        probs = np.stack([p.scores for p in predictions]) if task == "classification" and predictions else None
        n_classes = len(predictions[0].labels) if predictions else 2
        pool = selection.Pool(u, embeddings, probs, labelled, len(labelled), n_classes,
                              uncertainty_name=self.base or self.name)
        return sorted(p.index for p in selection.select(self.name, pool, k, rng))


def agent_strategies() -> list[str]:
    return sorted(STRATEGIES)


def resolve(name: str, task: str) -> Strategy:
    """The agent or batch strategy called ``name`` (or a short alias), checked to apply to ``task``."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key in BATCH:
        base = BASE_UNCERTAINTY[task]
        return Strategy(key, _wide_open(base), base)
    if key not in STRATEGIES:
        aliases = ", ".join(f"{a}={t}" for a, t in sorted(ALIASES.items()))
        raise StrategyError(f"unknown strategy {name!r}; the agent's strategies are "
                            f"{', '.join(agent_strategies())}, the batch-aware ones {', '.join(BATCH)} "
                            f"(aliases: {aliases})")
    if key == RANDOM:
        return Strategy(RANDOM, None)
    params = _wide_open(key)
    if STRATEGIES[key](_probe(task), Context(None, random.Random(0)), params) is None:
        usable = [s for s in agent_strategies() if s == RANDOM
                  or STRATEGIES[s](_probe(task), Context(None, random.Random(0)), _wide_open(s)) is not None]
        why = " (it compares consecutive frames of one camera)" if key == "flicker" else ""
        raise StrategyError(f"strategy {key!r} does not apply to {task} on a dataset{why}; "
                            f"use one of {', '.join(usable)}")
    return Strategy(key, params)


def parse_list(text: str, task: str) -> list[Strategy]:
    """``"margin,entropy,random"`` -> strategies, in order, duplicates removed."""
    names = [n for n in (p.strip() for p in text.split(",")) if n]
    if not names:
        raise StrategyError("no strategy given; e.g. --strategy margin,random")
    out: list[Strategy] = []
    for n in names:
        s = resolve(n, task)
        if s.name not in {o.name for o in out}:
            out.append(s)
    return out
