"""The ``[assist]`` section of the server config: which teacher model pre-labels, and how its labels map."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AssistConfig(BaseModel):
    """A teacher: any ONNX model with a model card (embedded, a sidecar, or ``card``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    model: Path
    card: Path | None = None  # None: the card in the ONNX metadata, else MODEL.card.toml/.json beside it
    providers: tuple[Literal["cpu", "cuda", "tensorrt"], ...] = ("cpu",)
    threads: int = Field(1, ge=0, le=64)  # onnxruntime intra-op threads (0: one per core)
    # teacher label -> project label (e.g. COCO car/truck/bus -> "vehicle"). A teacher label that is
    # neither mapped nor a project label itself is dropped.
    label_map: dict[str, str] = Field(default_factory=dict)
    min_score: float = Field(0.3, ge=0.0, le=1.0)
    auto: bool = True  # pre-label new unlabelled items as they arrive; else only on POST /api/assist/run
    queue_size: int = Field(64, ge=1, le=10_000)
    poll_s: float = Field(2.0, ge=0.05, le=3600.0)

    @field_validator("label_map")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [f"{k!r:.70} -> {t!r:.70}" for k, t in v.items() if not (0 < len(k) <= 64 and 0 < len(t) <= 64)]
        if bad:
            raise ValueError(f"label names must be 1-64 characters: {', '.join(bad)}")
        return v
