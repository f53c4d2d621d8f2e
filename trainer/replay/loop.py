"""The replay loop: what the live system does, with the labels already known.

For each strategy and seed: hold out the test split, label a small seed set,
then repeat: the exported ONNX model scores the unlabelled pool through the
agent's ``ModelRunner``, the strategy (the agent's sampling function) picks a
batch, the oracle reveals its labels and ``trainer.train.round.run_round``
trains an incremental round from the previous checkpoint. The test split is
the same for every strategy and seed, and a seed draws the same seed set for
every strategy, so curves differ only by what the strategies picked.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from trainer.dataset import Example
from trainer.replay.embed import Embedder
from trainer.replay.pool import FramePool, embed
from trainer.replay.strategies import Strategy
from trainer.train.config import TrainConfig
from trainer.train.round import run_round
from trainer.train.splits import MIN_EXAMPLES, assign_splits, stratum

METRICS = {"classification": ("accuracy",), "detection": ("map_50", "map")}


class ReplayError(ValueError):
    """Settings or data replay cannot run with; the message says what to change."""


@dataclass(frozen=True)
class ReplaySettings:
    batch: int = 40
    seed_per_class: int = 2
    rounds: int | None = 5
    budget: int | None = None  # total labels (seed set included); overrides rounds
    seeds: int = 3
    test_fraction: float = 0.2
    split_seed: int = 0
    metric: str | None = None  # None: accuracy, or map_50 for detection
    score_batch: int = 64  # frames per onnxruntime call when the model takes a batch
    frame_cache_mb: int = 256


@dataclass(frozen=True)
class Split:
    test: list[Example]
    pool: list[Example]


def hold_out(examples: Sequence[Example], task: str, settings: ReplaySettings) -> Split:
    """The trainer's own stratified split: ``test_fraction`` to test (no cap), the rest is the pool."""
    f = settings.test_fraction
    splits = assign_splits(examples, seed=settings.split_seed, ratios=(1.0 - f, 0.0, f), caps=(None, None, None))
    test = [replace(e, split="test") for e in examples if splits[e.id] == "test"]
    pool = [e for e in examples if splits[e.id] != "test"]
    if not test:
        raise ReplayError(f"--test-fraction {f} leaves no test example; raise it")
    if task == "classification":
        _check_round_minimum(test, settings)
    return Split(test, pool)


def _check_round_minimum(test: Sequence[Example], settings: ReplaySettings) -> None:
    """The first round sees the seed set plus the test split; the trainer wants MIN_EXAMPLES per class."""
    have = Counter(e.label for e in test)
    short = {c: n for c, n in sorted(have.items()) if n + settings.seed_per_class < MIN_EXAMPLES}
    if short:
        listed = ", ".join(f"{c!r} {n}" for c, n in short.items())
        raise ReplayError(f"the held-out test split is too small for the trainer's minimum of {MIN_EXAMPLES} "
                          f"examples per class in a round (test examples: {listed}; plus {settings.seed_per_class} "
                          f"seed labels each): raise --test-fraction or --seed-per-class, or use a larger dataset")


def seed_set(pool: Sequence[Example], task: str, per_class: int, rng: random.Random) -> list[int]:
    """Indices of ``per_class`` random pool examples per class (images showing it, for detection)."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(pool):
        classes = {e.label} if task == "classification" else {b.label for b in e.boxes}
        for c in classes:
            by_class[c].append(i)
    chosen: set[int] = set()
    for c in sorted(by_class):
        free = [i for i in by_class[c] if i not in chosen]
        have = sum(1 for i in by_class[c] if i in chosen)
        chosen.update(rng.sample(free, min(len(free), max(0, per_class - have))))
    return sorted(chosen)


def metric_of(metrics: dict, name: str) -> float:
    if name not in metrics:
        raise ReplayError(f"the round reported no {name!r} (it has {', '.join(sorted(metrics))})")
    return float(metrics[name])


def batch_sizes(settings: ReplaySettings, start: int, pool_size: int) -> list[int]:
    """How many labels each round after the seed set adds."""
    if settings.budget is not None:
        left, out = min(settings.budget - start, pool_size), []
        while left > 0:
            out.append(min(settings.batch, left))
            left -= out[-1]
        return out
    rounds = settings.rounds if settings.rounds is not None else 5
    out, left = [], pool_size
    for _ in range(rounds):
        if left <= 0:
            break
        out.append(min(settings.batch, left))
        left -= out[-1]
    return out


@dataclass
class RunStats:
    train_s: float = 0.0
    score_s: float = 0.0
    embed_s: float = 0.0
    scored_frames: int = 0
    rounds: int = 0


@dataclass(frozen=True)
class Job:
    """What every curve of one replay shares."""

    split: Split
    pool: FramePool
    task: str
    config: TrainConfig
    settings: ReplaySettings
    metric: str
    stats: RunStats
    progress: Callable[[str], None] | None = None


def pick_batch(job: Job, strategy: Strategy, model: Path, checkpoint: Path, labelled: list[int],
               unlabelled: list[int], k: int, rng: random.Random) -> list[int]:
    """The agent's runner scores the unlabelled frames with the newest model; the strategy picks ``k``.

    A batch-aware strategy also gets the round model's penultimate features
    of the unlabelled and the labelled frames (``trainer.replay.embed``).
    """
    t0 = time.perf_counter()
    runner = job.pool.runner(model)
    predictions = job.pool.predict(runner, unlabelled)
    job.stats.score_s += time.perf_counter() - t0
    job.stats.scored_frames += len(unlabelled)
    if not strategy.batch_aware:
        return [unlabelled[j] for j in strategy.pick(predictions, k, rng)]
    t0 = time.perf_counter()
    embedder = Embedder(checkpoint)
    features = embed(job.pool, runner, unlabelled, embedder)
    known = embed(job.pool, runner, labelled, embedder)
    job.stats.embed_s += time.perf_counter() - t0
    return [unlabelled[j] for j in strategy.pick_batch(predictions, features, known, k, rng)]


def run_one(job: Job, strategy: Strategy, seed: int, work: Path) -> list[dict]:
    """One learning curve: ``[{"labels": n, "metric": m}, ...]``, seed set first."""
    pool = job.split.pool
    labelled = seed_set(pool, job.task, job.settings.seed_per_class, random.Random(f"replay/{seed}"))
    unlabelled = sorted(set(range(len(pool))) - set(labelled))
    # A strategy-specific stream for picking, so every strategy sees the same seed set.
    pick_rng = random.Random(f"replay/{seed}/{strategy.name}")
    cfg = job.config.model_copy(update={"seed": seed})
    round_added = {i: 0 for i in labelled}
    curve: list[dict] = []
    parent: Path | None = None
    model: Path | None = None
    for r, k in enumerate([0] + batch_sizes(job.settings, len(labelled), len(unlabelled))):
        if k:
            picked = pick_batch(job, strategy, model, parent, sorted(round_added), unlabelled, k, pick_rng)
            round_added.update({i: r for i in picked})
            unlabelled = sorted(set(unlabelled) - set(picked))
        examples = [replace(pool[i], split="train", round_added=round_added[i]) for i in sorted(round_added)]
        everything = examples + job.split.test
        t0 = time.perf_counter()
        result = run_round(everything, cfg, work / f"round{r}", parent=parent, round_index=r,
                           existing_splits={e.id: e.split for e in everything}, name="replay", version=r)
        job.stats.train_s += time.perf_counter() - t0
        job.stats.rounds += 1
        curve.append({"labels": len(examples), "metric": round(metric_of(result.metrics, job.metric), 6)})
        if parent is not None:
            shutil.rmtree(parent.parent, ignore_errors=True)  # only the newest round is needed next
        parent, model = result.checkpoint, result.onnx
        if job.progress:
            job.progress(f"{strategy.name} seed {seed} round {r}: {len(examples)} labels, "
                         f"{job.metric} {curve[-1]['metric']:.4f}")
    return curve


def replay(examples: Sequence[Example], task: str, strategies: Sequence[Strategy], config: TrainConfig,
           settings: ReplaySettings, work_dir: Path | None = None,
           progress: Callable[[str], None] | None = None) -> dict:
    """Run every strategy for every seed; returns the result document (curves, sizes, timing)."""
    metric = settings.metric or METRICS[task][0]
    if metric not in METRICS[task]:
        raise ReplayError(f"metric {metric!r} does not fit {task}; use one of {', '.join(METRICS[task])}")
    split = hold_out(examples, task, settings)
    pool = FramePool(split.pool, strategies, settings.score_batch, settings.frame_cache_mb * 2**20)
    job = Job(split, pool, task, config, settings, metric, RunStats(), progress)
    t0 = time.perf_counter()
    curves: dict[str, list[list[dict]]] = {}
    root = Path(tempfile.mkdtemp(prefix="edgeloop-replay-", dir=work_dir))
    try:
        for strategy in strategies:
            curves[strategy.name] = [run_one(job, strategy, seed, root / f"{strategy.name}-{seed}")
                                     for seed in range(settings.seeds)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    stats = job.stats
    classes = sorted({stratum(e) for e in split.pool}) if task == "classification" else None
    return {"metric_name": metric, "curves": curves, "task": task,
            "sizes": {"pool": len(split.pool), "test": len(split.test), "classes": classes},
            "timing": {"seconds": round(time.perf_counter() - t0, 2), "train_seconds": round(stats.train_s, 2),
                       "score_seconds": round(stats.score_s, 2), "embed_seconds": round(stats.embed_s, 2),
                       "rounds": stats.rounds,
                       "scored_frames": stats.scored_frames,
                       "score_ms_per_frame": round(1000 * stats.score_s / max(1, stats.scored_frames), 3)}}
