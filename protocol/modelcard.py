"""The model card: everything an agent needs to run an ONNX model it did not build.

The trainer writes it as JSON into the ONNX metadata under CARD_METADATA_KEY;
for a third-party model it sits beside the file as ``<model>.onnx.card.json``
(or ``.card.toml``). Normalization is ``(pixel * scale - mean) / std`` per
channel, in the card's colour order (one channel for ``GRAY``). Every field
is documented, with an example per output type, in agent/README.md.
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


Channel = tuple[float] | tuple[float, float, float]


class InputSpec(_Strict):
    name: str | None = None  # input tensor; None = the model's first input
    width: int = Field(ge=1, le=8192)
    height: int = Field(ge=1, le=8192)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["RGB", "BGR", "GRAY"] = "RGB"  # GRAY: one channel
    dtype: Literal["float32", "uint8"] = "float32"  # uint8: raw 0-255 pixels, no normalization
    scale: float = 1.0 / 255.0
    mean: Channel = (0.0, 0.0, 0.0)  # one value per channel (one value is used for every channel)
    std: Channel = (1.0, 1.0, 1.0)
    resize: Literal["stretch", "letterbox"] = "stretch"
    letterbox: Literal["center", "top_left"] = "center"  # where the resized frame sits on the canvas
    pad_value: int = Field(114, ge=0, le=255)  # the letterbox canvas colour

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: Channel) -> Channel:
        if any(s == 0 for s in v):
            raise ValueError("std must not contain 0")
        return v

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3

    def per_channel(self, key: Literal["mean", "std"]) -> tuple[float, ...]:
        """``mean`` or ``std`` with exactly one value per input channel."""
        v = getattr(self, key)
        return tuple(v[:1] * self.channels if len(v) == 1 or self.channels == 1 else v)

    def model_post_init(self, _ctx: Any) -> None:
        for key in ("mean", "std"):
            if self.color == "GRAY" and key in self.model_fields_set and len(getattr(self, key)) != 1:
                raise ValueError(f"input.{key} must have one value for a GRAY (1-channel) input")
        if self.dtype == "uint8":
            identity = {"scale": self.scale == 1.0, "mean": all(m == 0 for m in self.mean),
                        "std": all(v == 1 for v in self.std)}
            odd = [k for k, ok in identity.items() if k in self.model_fields_set and not ok]
            if odd:
                raise ValueError(f"input.dtype uint8 feeds raw 0-255 pixels: leave out {', '.join(odd)} "
                                 "(or set scale = 1, mean = 0, std = 1)")


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


class _DenseDetections(_Strict):
    """What the agent does after decoding dense YOLO-family rows: scores, NMS, caps."""

    objectness: bool = True  # an objectness column/tensor multiplies the class scores
    score: Literal["product", "sqrt"] = "product"  # objectness x class, or its square root
    class_agnostic: bool = False  # one NMS over all classes instead of one per class
    multi_label: bool = False  # every class at or above the floor is a candidate, not only a row's best
    score_threshold: float = Field(0.5, ge=0.0, le=1.0)
    iou_threshold: float = Field(0.45, ge=0.0, le=1.0)
    max_candidates: int = Field(3000, ge=1, le=100000)  # best-scoring rows kept for NMS
    max_detections: int = Field(100, ge=1, le=10000)

    def model_post_init(self, _ctx: Any) -> None:
        if self.score == "sqrt" and not self.objectness:
            raise ValueError('output.score "sqrt" needs objectness')


class YoloOutput(_DenseDetections):
    """Decoded YOLO boxes in one tensor: [1, N, 4+1+C] (v5/v7) or, transposed, [1, 4+C, N] (v8/v11)."""

    type: Literal["yolo"] = "yolo"
    output: str | None = None  # None = the model's first output
    transposed: bool = False  # True: [1, 4(+1)+C, N], one column per candidate (Ultralytics v8/v11)
    box_format: Literal["xyxy", "xywh", "cxcywh"] = "cxcywh"
    normalized: bool = False  # False: pixels of the model input


class YoloxOutput(_DenseDetections):
    """Raw anchor-free grid outputs (YOLOX): cx = (gx + dx) * s, w = exp(dw) * s, per stride.

    Either one tensor with every stride's cells concatenated (``output``), one
    tensor per stride (``outputs``), or separate box / objectness / class
    tensors per stride (``box_outputs``, ``obj_outputs``, ``cls_outputs``).
    """

    type: Literal["yolox"] = "yolox"
    strides: tuple[int, ...] = Field((8, 16, 32), min_length=1, max_length=8)
    output: str | None = None  # concatenated [1, N, 4+1+C]; None (and no lists) = the first output
    outputs: tuple[str, ...] = ()  # one per stride: [1, 4+1+C, H, W] or [1, H*W, 4+1+C]
    box_outputs: tuple[str, ...] = ()  # one per stride: [1, 4, H, W] or [1, H*W, 4]
    obj_outputs: tuple[str, ...] = ()  # one per stride: [1, 1, H, W] or [1, H*W, 1]
    cls_outputs: tuple[str, ...] = ()  # one per stride: [1, C, H, W] or [1, H*W, C]
    sigmoid: bool = False  # True: objectness and class values are logits

    def model_post_init(self, _ctx: Any) -> None:
        super().model_post_init(_ctx)
        if any(not 1 <= st <= 1024 for st in self.strides) or len(set(self.strides)) != len(self.strides):
            raise ValueError("output.strides must be distinct integers in [1, 1024]")
        separate = bool(self.box_outputs or self.obj_outputs or self.cls_outputs)
        if sum((self.output is not None, bool(self.outputs), separate)) > 1:
            raise ValueError("output: give one of output, outputs, or box_outputs/obj_outputs/cls_outputs")
        n = len(self.strides)
        if self.outputs and len(self.outputs) != n:
            raise ValueError(f"output.outputs names {len(self.outputs)} tensors for {n} strides")
        if separate:
            want = {"box_outputs": n, "cls_outputs": n, "obj_outputs": n if self.objectness else 0}
            for key, count in want.items():
                if len(getattr(self, key)) != count:
                    raise ValueError(f"output.{key} names {len(getattr(self, key))} tensors, expected {count} "
                                     f"({n} strides{'' if self.objectness else ', objectness = false'})")

    def output_names(self) -> tuple[str, ...]:
        """Every named output tensor, grouped per stride (box, obj, cls for each)."""
        if self.outputs:
            return self.outputs
        if self.box_outputs:
            objs = self.obj_outputs or (None,) * len(self.strides)
            return tuple(x for trio in zip(self.box_outputs, objs, self.cls_outputs) for x in trio if x)
        return (self.output,) if self.output else ()


OutputSpec = Annotated[Union[ClassificationOutput, BoxesScoresLabelsOutput, SSDOutput, YoloOutput, YoloxOutput],
                       Field(discriminator="type")]
DETECTION_OUTPUTS = (BoxesScoresLabelsOutput, SSDOutput, YoloOutput, YoloxOutput)


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
        if isinstance(self.output, YoloxOutput):
            inp = self.input
            for st in self.output.strides:
                if inp.width % st or inp.height % st:
                    raise ValueError(f"output.strides: input {inp.width}x{inp.height} is not a multiple of "
                                     f"stride {st}")

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
