"""Penultimate features of a round's torch model, for replay's batch-aware strategies.

Replay has the round's checkpoint, so it takes embeddings from the torch
model directly (an exported model may or may not carry an embedding output):
the input of the last ``nn.Linear`` for a classifier (the pooled features
the head sees), or the globally average-pooled output of ``backbone`` for a
detector. Inputs are the agent runner's own preprocessed tensors, so the
features describe exactly the frames the runner scored. Runs on the CPU in
the caller's thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.train.checkpoint import load_checkpoint
from trainer.train.models import build_model, get_spec


class EmbeddingError(RuntimeError):
    """A model replay cannot take penultimate features from."""


def _target(model: nn.Module, task: str) -> tuple[nn.Module, str]:
    """The module to hook and whether its ``input`` or ``output`` is the embedding."""
    if task == "classification":
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if linears:
            return linears[-1], "input"
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone, "output"
    raise EmbeddingError(f"no penultimate layer found in {type(model).__name__} "
                         "(a classifier needs a final nn.Linear, a detector a .backbone)")


def _pool(x: object) -> torch.Tensor:
    if isinstance(x, dict):  # torchvision FPN: the coarsest level
        x = list(x.values())[-1]
    if isinstance(x, (tuple, list)):
        x = x[0]
    if not isinstance(x, torch.Tensor):
        raise EmbeddingError(f"the hooked layer gave {type(x).__name__}, not a tensor")
    return x.flatten(2).mean(2) if x.dim() == 4 else x.flatten(1)


class Embedder:
    """``embedder(batch) -> [B, d]`` float32 features for runner-preprocessed NCHW batches."""

    def __init__(self, checkpoint: Path):
        ckpt = load_checkpoint(checkpoint)
        spec = get_spec(ckpt["model_name"])
        self.model = build_model(spec, len(ckpt["labels"]), ckpt["input_size"])
        self.model.load_state_dict(ckpt["state_dict"])
        self.model.eval()
        self.kind = spec.kind
        self._module, self._where = _target(self.model, ckpt["task"])
        self._seen: torch.Tensor | None = None

    def _hook(self, module: nn.Module, args: tuple, output: object) -> None:
        self._seen = _pool(args[0] if self._where == "input" else output)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        handle = self._module.register_forward_hook(self._hook)
        try:
            self._seen = None
            x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
            if self.kind == "dense":
                self.model.dense(x)
            else:
                self.model(x if self.kind == "logits" else list(x))
        finally:
            handle.remove()
        if self._seen is None:
            raise EmbeddingError("the forward pass never reached the penultimate layer")
        return self._seen.float().numpy().copy()
