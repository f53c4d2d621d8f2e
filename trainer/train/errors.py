"""The trainer's exceptions; the CLI turns them into one-line errors."""


class TrainingError(Exception):
    """A round cannot run or produced an unusable model; the message says why and what to do."""


class RoundCancelled(TrainingError):
    """The cancel callback asked the round to stop; nothing was published."""


class ExportMismatch(TrainingError):
    """onnxruntime's outputs differ from torch's beyond the tolerance."""
