"""A model's reference confidence histogram: its predictions on its frozen test split, binned as agents bin.

``reference_histogram`` runs the exported ONNX file through the agents' own
runtime (``agent.model.ModelRunner``, default score floor: the card's
threshold, as an agent without band strategies) and bins each top-1
confidence (classification) or each detection's score (detection) with
``agent.metrics.hist_bin``, so the reference and the agents' telemetry share
their bins and their decoding by construction.

``store_reference`` is the hook the round pipeline calls after registering a
model: it never fails a round (a problem is logged and the model simply has
no drift reference). It blocks on inference over the test split (seconds).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from protocol.messages import HIST_BINS

log = logging.getLogger(__name__)


def reference_histogram(model_path: str | Path, image_paths: Sequence[str | Path]) -> tuple[dict[str, list[int]], int]:
    """(label -> HIST_BINS counts, images read) over the given images."""
    import cv2

    from agent.metrics import hist_bin
    from agent.model import ModelRunner

    runner = ModelRunner.load(Path(model_path), ["cpu"])
    hist: dict[str, list[int]] = {}
    read = 0
    for path in image_paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("drift reference: %s cannot be read; left out", path)
            continue
        read += 1
        for label, conf in runner.infer(image).top():
            hist.setdefault(label, [0] * HIST_BINS)[hist_bin(conf)] += 1
    return hist, read


def store_reference(registry, name: str, version: int, model_path: str | Path, examples: Sequence) -> bool:
    """Compute and store the reference of ``name`` v``version`` on ``examples`` (test split); False if not."""
    if not examples:
        log.info("drift reference of %s v%d: no test examples, none stored", name, version)
        return False
    try:
        hist, read = reference_histogram(model_path, [e.image_path for e in examples])
        if not read:
            return False
        registry.set_reference(name, version, hist, read)
    except Exception:  # a round must not fail for its drift reference
        log.exception("drift reference of %s v%d could not be computed", name, version)
        return False
    log.info("drift reference of %s v%d: %d test images", name, version, read)
    return True
