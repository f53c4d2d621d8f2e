"""The unlabelled pool as the agents see it: BGR frames through the agent's ModelRunner.

Frames are decoded with OpenCV exactly as a camera frame reaches the agent
and go through the runner's own preprocess and decode. When the exported
graph takes a batch, frames are stacked into one onnxruntime call per
``score_batch``: the same arithmetic as one call per frame, much faster on
a pool of thousands.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from agent.model import ModelRunner, Prediction
from trainer.dataset import Example
from trainer.replay.strategies import Strategy

log = logging.getLogger(__name__)


class PoolError(RuntimeError):
    """A pool image that cannot be read: the dataset changed or is damaged."""


def score_floor(strategies: Sequence[Strategy]) -> float:
    """Keep candidate boxes down to the lowest band an agent would sample on (1.0: none needed)."""
    lows = [getattr(s.params, "low", None) for s in strategies]
    return min([x for x in lows if x is not None], default=1.0)


class FramePool:
    def __init__(self, examples: Sequence[Example], strategies: Sequence[Strategy], score_batch: int = 64,
                 cache_bytes: int = 256 * 2**20):
        self.examples = list(examples)
        self.floor = score_floor(strategies)
        self.score_batch = max(1, score_batch)
        self.cache_bytes = cache_bytes
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0
        self._full = False

    def frame(self, i: int) -> np.ndarray:
        img = self._cache.get(i)
        if img is not None:
            return img
        path = self.examples[i].image_path
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise PoolError(f"cannot read pool image {path}")
        if self._cached_bytes + img.nbytes <= self.cache_bytes:
            self._cache[i] = img
            self._cached_bytes += img.nbytes
        elif not self._full:  # past the budget frames are decoded again every round: slower, same result
            self._full = True
            log.info("frame cache full at %d MiB (%d frames); the rest are read from disk each round",
                     self._cached_bytes // 2**20, len(self._cache))
        return img

    def runner(self, onnx_path: Path) -> ModelRunner:
        return ModelRunner.load(Path(onnx_path), ["cpu"], score_floor=self.floor)

    def predict(self, runner: ModelRunner, indices: Sequence[int]) -> list[Prediction]:
        """The runner's prediction for each pool frame in ``indices``, in order."""
        if not _takes_batches(runner):
            return [runner.infer(self.frame(i)) for i in indices]
        out: list[Prediction] = []
        for start in range(0, len(indices), self.score_batch):
            chunk = indices[start:start + self.score_batch]
            frames = [self.frame(i) for i in chunk]
            tensor = np.empty((len(frames), *runner.input_shape[1:]), runner.dtype)
            geos = []
            for j, frame in enumerate(frames):
                one, geo = runner.preprocess(frame)
                tensor[j] = one[0]  # copied at once: the runner reuses its buffer on the next call
                geos.append(geo)
            outputs = runner.session.run(runner.output_names, {runner.input_name: tensor})
            for j, (frame, geo) in enumerate(zip(frames, geos)):
                row = [o[j:j + 1] for o in outputs]
                out.append(runner.decode(row, frame.shape[1], frame.shape[0], geo))
        return out


def embed(pool: FramePool, runner: ModelRunner, indices: Sequence[int], embedder, chunk: int = 64) -> np.ndarray:
    """Penultimate features ``[len(indices), d]`` of pool frames, from the runner's own preprocessed input."""
    parts = []
    for start in range(0, len(indices), chunk):
        part = indices[start:start + chunk]
        tensor = np.empty((len(part), *runner.input_shape[1:]), runner.dtype)
        for j, i in enumerate(part):
            tensor[j] = runner.preprocess(pool.frame(i))[0][0]
        parts.append(embedder(tensor))
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def _takes_batches(runner: ModelRunner) -> bool:
    """True when the graph's batch dimension is symbolic and every output is batched along it."""
    first = next(i for i in runner.session.get_inputs() if i.name == runner.input_name)
    if isinstance(first.shape[0], int) and first.shape[0] > 0:
        return False
    outputs = {o.name: o for o in runner.session.get_outputs()}
    return all(not (isinstance(outputs[n].shape[0], int) and outputs[n].shape[0] > 0) and
               len(outputs[n].shape) >= 2 for n in runner.output_names)
