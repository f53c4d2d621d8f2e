"""PyTorch training for edgeloop: splits, models, augmentation, the training
loop, metrics, reports and single-file ONNX export.

Import the submodules you need (``trainer.train.round.run_round`` is the entry
point); nothing heavy is imported by this package itself.
"""

from trainer.train.errors import TrainingError, RoundCancelled

__all__ = ["TrainingError", "RoundCancelled"]
