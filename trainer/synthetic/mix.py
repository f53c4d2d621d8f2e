"""Mix generated examples into the server's dataset before a round, as a configured share of training.

``top_up(store, mix, round_index)`` runs in the round manager just before it
snapshots the examples (on the thread that starts the round; it waits on the
store's writer). It renders as many images with the ``mix.generator`` as
bring synthetic examples to ``mix.share`` of the training data and adds them
to the store as labelled, ``source = "synthetic"``, ``split = "train"``:
synthetic images teach, but they never measure, so they never enter the
validation or test split (splits are append-only: an example stored as train
stays train). They are not "new" either (``round_added`` 0), so the round's
oversampling of new examples stays on the real corrections. Generated images
whose classes the project does not have are left out. Nothing is generated
when the share is met.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from trainer.synthetic import get_generator

log = logging.getLogger(__name__)
MAX_PER_ROUND = 2000  # bounds the time a round's start may spend rendering


class SyntheticMix(BaseModel):
    """``[rounds.synthetic]``: which generator, what share of the training data, its parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    generator: str = "shapes"  # a trainer.synthetic generator: built-in name, entry point or module:function
    share: float = Field(0.2, gt=0, le=0.9)  # of the training split (real train + synthetic)
    params: dict = Field(default_factory=dict)  # keyword arguments for the generator, e.g. {drift = 0.5}
    seed: int = 0


def wanted(real_train: int, synthetic: int, share: float) -> int:
    """How many more synthetic examples make them ``share`` of ``real_train + synthetic``."""
    target = math.ceil(share / (1.0 - share) * real_train - 1e-9)
    return max(0, min(MAX_PER_ROUND, target - synthetic))


def _counts(store) -> tuple[int, int]:
    """(real labelled examples that train or will, synthetic labelled examples)."""
    db = store.db.read()
    real = db.execute("SELECT count(*) FROM examples WHERE status = 'labeled' AND source != 'synthetic'"
                      " AND (split IS NULL OR split = 'train')").fetchone()[0]
    synthetic = db.execute("SELECT count(*) FROM examples WHERE status = 'labeled' AND source = 'synthetic'"
                           ).fetchone()[0]
    return int(real), int(synthetic)


def synthetic_state(store, mix: SyntheticMix) -> dict:
    """The configuration and what the store holds now: synthetic examples and their share of training."""
    real, synthetic = _counts(store)
    return {**mix.model_dump(), "examples": synthetic,
            "train_share": round(synthetic / (real + synthetic), 4) if real + synthetic else 0.0}


def top_up(store, mix: SyntheticMix, round_index: int) -> int:
    """Add synthetic training examples up to the configured share; returns how many were added."""
    from trainer.store import new_example

    real, have = _counts(store)
    n = wanted(real, have, mix.share)
    if n == 0:
        return 0
    project = store.project()
    generator = get_generator(mix.generator, **mix.params)
    if project.task is not None and generator.task != project.task:
        log.warning("synthetic mix: generator %s makes %s examples but the project is %s; nothing added",
                    mix.generator, generator.task, project.task)
        return 0
    known = set(project.labels)
    rng = np.random.default_rng([mix.seed, round_index])
    with tempfile.TemporaryDirectory(prefix="edgeloop-synthetic-") as tmp:
        examples = generator.generate(n, rng, Path(tmp))
        new = []
        for e in examples:
            classes = {e.label} if e.label is not None else {b.label for b in e.boxes}
            if known and not classes <= known:
                continue
            new.append(new_example(Path(e.image_path).read_bytes(), label=e.label, boxes=tuple(e.boxes),
                                   split="train", source="synthetic", status="labeled",
                                   origin=f"synthetic:{mix.generator}:{e.id}", labeled_by=f"synthetic:{mix.generator}",
                                   round_added=0))  # not "new this round": never oversampled
    if len(new) < len(examples):
        log.warning("synthetic mix: %d of %d generated examples have classes the project lacks; left out",
                    len(examples) - len(new), len(examples))
    added = store.add_examples(new, task=generator.task) if new else 0
    log.info("synthetic mix: %d %s example(s) added for round %d (share %.2f of training: %d real, %d synthetic before)",
             added, mix.generator, round_index, mix.share, real, have)
    return added
