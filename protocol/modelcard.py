"""The model card: everything an agent needs to run an ONNX model it did not build.

The trainer writes it as JSON into the ONNX metadata under CARD_METADATA_KEY;
for a third-party model it sits beside the file as ``<model>.onnx.card.json``
(or ``.card.toml``). Normalization is ``(pixel * scale - mean) / std`` per
channel, in the card's colour order.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ProtocolError
from .topics import ID_RE

CARD_METADATA_KEY = "edgeloop.card"
CARD_SCHEMA = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    name: str | None = None  # input tensor; None = the model's first input
    width: int = Field(ge=1, le=8192)
    height: int = Field(ge=1, le=8192)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["RGB", "BGR"] = "RGB"
    dtype: Literal["float32", "uint8"] = "float32"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: Literal["stretch", "letterbox"] = "stretch"

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in v):
            raise ValueError("std must not contain 0")
        return v


class ClassificationOutput(_Strict):
    type: Literal["classification"] = "classification"
    output: str | None = None  # None = the model's first output
    activation: Literal["softmax", "sigmoid", "none"] = "softmax"  # none: already probabilities


class BoxesScoresLabelsOutput(_Strict):
    """Separate boxes [N,4], scores [N] and labels [N] outputs, already filtered (torchvision style)."""

    type: Literal["boxes_scores_labels"] = "boxes_scores_labels"
    boxes: str = "boxes"
    scores: str = "scores"
    labels: str = "labels"
    box_format: Literal["xyxy", "xywh", "cxcywh"] = "xyxy"
    normalized: bool = False  # False: pixels of the model input
    label_offset: int = 0  # subtracted from raw labels (1 when 0 is background)
    score_threshold: float = Field(0.5, ge=0.0, le=1.0)


class SSDOutput(_Strict):
    """Dense scores [1,N,C] and boxes [1,N,4]; the agent thresholds and runs NMS."""

    type: Literal["ssd"] = "ssd"
    boxes: str = "boxes"
    scores: str = "scores"
    box_format: Literal["xyxy", "xywh", "cxcywh"] = "xyxy"
    normalized: bool = True
    background_class: int | None = 0  # this score column is dropped; the rest map to labels in order
    score_threshold: float = Field(0.5, ge=0.0, le=1.0)
    iou_threshold: float = Field(0.45, ge=0.0, le=1.0)
    max_detections: int = Field(100, ge=1, le=10000)


OutputSpec = Annotated[Union[ClassificationOutput, BoxesScoresLabelsOutput, SSDOutput], Field(discriminator="type")]


class ModelCard(_Strict):
    schema_version: int = CARD_SCHEMA
    name: str
    version: int = Field(0, ge=0)
    task: Literal["classification", "detection"]
    labels: tuple[str, ...] = Field(min_length=1, max_length=1000)
    input: InputSpec
    output: OutputSpec
    # a second ONNX output with pooled penultimate features, [1, D] or [1, D, 1, 1]; None: the model has none
    embedding_output: str | None = Field(None, min_length=1, max_length=256)
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)  # round, dataset_version, seed, code_version...

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not ID_RE.match(v):
            raise ValueError(f"must match {ID_RE.pattern}")
        return v

    def model_post_init(self, _ctx: Any) -> None:
        is_cls = isinstance(self.output, ClassificationOutput)
        if is_cls != (self.task == "classification"):
            raise ValueError(f"output type {self.output.type!r} does not fit task {self.task!r}")

    def to_json(self) -> str:
        return self.model_dump_json()


def card_from_dict(data: object, source: str = "model card") -> ModelCard:
    """Validate a card, turning pydantic's errors into a ProtocolError naming the key."""
    try:
        return ModelCard.model_validate(data)
    except (ValidationError, ValueError) as e:
        raise ProtocolError("bad_model_card", f"{source}: {_first_error(e)}") from e


def card_from_json(text: str | bytes, source: str = "model card") -> ModelCard:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError("bad_model_card", f"{source}: not JSON ({e})") from e
    return card_from_dict(data, source)


def sidecar_card(model_path: str | Path) -> ModelCard | None:
    """The card beside a model file (``x.onnx.card.json`` / ``.card.toml``), if any."""
    model_path = Path(model_path)
    for suffix, parse in ((".card.json", json.loads), (".card.toml", tomllib.loads)):
        path = model_path.with_name(model_path.name + suffix)
        if path.exists():
            try:
                data = parse(path.read_text(encoding="utf-8"))
            except (ValueError, tomllib.TOMLDecodeError) as e:
                raise ProtocolError("bad_model_card", f"{path}: {e}") from e
            return card_from_dict(data, str(path))
    return None


def _first_error(e: Exception) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(card)"
        return f"{where}: {err['msg']}"
    return str(e)
