"""Run an ONNX model described by a model card: preprocess, infer, decode.

The card (protocol.modelcard) says how to feed the model and how to read its
outputs, so the agent runs models it did not produce. A ModelRunner is built
once per model version: load, check the card against the graph, warm up with
a zero tensor, check the output shapes. Any failure is a ModelError whose
message says what is wrong, and nothing half-loaded is ever returned.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from protocol.errors import ProtocolError
from protocol.modelcard import (CARD_METADATA_KEY, BoxesScoresLabelsOutput, ClassificationOutput, ModelCard,
                                SSDOutput, card_from_dict, card_from_json, sidecar_card)

log = logging.getLogger(__name__)

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "cpu": "CPUExecutionProvider"}
EMPTY_BOXES = np.zeros((0, 4), np.float32)


class ModelError(RuntimeError):
    """A model that cannot be run: not ONNX, wrong shapes, a card that does not fit."""


class NonFiniteOutput(ValueError):
    """The model gave NaN or inf on a frame: nothing of it may be decoded, sampled or sent."""


@dataclass(frozen=True)
class Prediction:
    task: str
    labels: tuple[str, ...]
    scores: np.ndarray  # classification: probability per label; detection: empty
    boxes: np.ndarray  # detection: [N, 4] normalized x1, y1, x2, y2 of the original frame
    box_scores: np.ndarray  # [N]
    box_labels: np.ndarray  # [N] int, index into labels
    threshold: float  # detection: boxes from this score are detections, lower ones candidates

    def top(self) -> list[tuple[str, float]]:
        """(label, confidence) pairs for the histogram: top-1 class, or every detection candidate."""
        if self.task == "classification":
            i = int(np.argmax(self.scores))
            return [(self.labels[i], float(self.scores[i]))]
        return [(self.labels[int(lab)], float(s)) for lab, s in zip(self.box_labels, self.box_scores)]

    def present(self) -> set[str]:
        """Labels the model says are in the frame (for the class filter and quotas)."""
        if self.task == "classification":
            return {self.labels[int(np.argmax(self.scores))]}
        keep = self.box_scores >= self.threshold
        return {self.labels[int(i)] for i in self.box_labels[keep]}


def load_card_file(path: Path) -> ModelCard:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            return card_from_dict(tomllib.loads(text), str(path))
        return card_from_json(text, str(path))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ModelError(f"model card {path}: {e}") from e
    except ProtocolError as e:
        raise ModelError(str(e)) from e


def choose_providers(wanted: list[str]) -> list[str]:
    available = set(ort.get_available_providers())
    chosen = [PROVIDERS[w] for w in wanted if PROVIDERS[w] in available]
    return chosen or ["CPUExecutionProvider"]


def open_session(path: Path, providers: list[str], intra: int = 0, inter: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # third-party exports warn once per weight otherwise
    opts.intra_op_num_threads = intra
    opts.inter_op_num_threads = inter
    # onnxruntime's worker threads spin-wait between runs by default: at camera rates
    # (15-30 fps) that burns whole cores for nothing on a device that has few.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=choose_providers(providers))
    except Exception as e:  # onnxruntime raises its own untyped errors for bad files
        raise ModelError(f"{path.name} is not a loadable ONNX model: {str(e).strip()[:300]}") from e


def resolve_card(session: ort.InferenceSession, path: Path, card_file: Path | None) -> ModelCard:
    """Card from an explicit file, else the ONNX metadata, else a sidecar beside the model."""
    if card_file is not None:
        return load_card_file(card_file)
    meta = session.get_modelmeta().custom_metadata_map.get(CARD_METADATA_KEY)
    try:
        if meta:
            return card_from_json(meta, f"{path.name} metadata")
        card = sidecar_card(path)
    except ProtocolError as e:
        raise ModelError(str(e)) from e
    if card is None:
        raise ModelError(f"{path.name} has no model card: no '{CARD_METADATA_KEY}' metadata and no "
                         f"{path.name}.card.json/.card.toml beside it")
    return card


def _dims_fit(actual: list, expected: list[int]) -> bool:
    return len(actual) == len(expected) and all(
        not isinstance(a, int) or a <= 0 or a == e for a, e in zip(actual, expected))


class ModelRunner:
    """One loaded, checked and warmed-up model version; ``infer`` is for one thread at a time."""

    def __init__(self, session: ort.InferenceSession, card: ModelCard, path: Path, score_floor: float = 1.0) -> None:
        self.session = session
        self.card = card
        self.path = path
        spec = card.input
        inputs = {i.name: i for i in session.get_inputs()}
        self.input_name = spec.name or session.get_inputs()[0].name
        if self.input_name not in inputs:
            raise ModelError(f"card input {self.input_name!r} is not an input of {path.name} ({', '.join(inputs)})")
        want = [1, 3, spec.height, spec.width] if spec.layout == "NCHW" else [1, spec.height, spec.width, 3]
        got = list(inputs[self.input_name].shape)
        if not _dims_fit(got, want):
            raise ModelError(f"{path.name} input {self.input_name} has shape {got}, the card says {want}")
        self.input_shape = want
        self.dtype = np.float32 if spec.dtype == "float32" else np.uint8
        # (x * scale - mean) / std == x * gain - offset: two in-place passes, no temporaries
        self._gain = (spec.scale / np.array(spec.std, np.float32)).astype(np.float32)
        self._offset = (np.array(spec.mean, np.float32) / np.array(spec.std, np.float32)).astype(np.float32)
        self._out = np.empty(want, self.dtype)
        threshold = card.output.score_threshold if card.task == "detection" else 0.0
        self.threshold = threshold
        self.floor = min(threshold, score_floor)  # keep candidates below the threshold for band strategies
        self.output_names = self._output_names()
        # A model failing on every frame would print a kernel error per frame; the agent logs them rate-limited.
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4
        self.warm_up()

    @classmethod
    def load(cls, path: Path, providers: list[str], card: ModelCard | None = None, card_file: Path | None = None,
             intra: int = 0, inter: int = 0, score_floor: float = 1.0) -> "ModelRunner":
        session = open_session(path, providers, intra, inter)
        card = card or resolve_card(session, path, card_file)
        return cls(session, card, path, score_floor)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> int:
        return self.card.version

    def _output_names(self) -> list[str]:
        out = self.card.output
        have = [o.name for o in self.session.get_outputs()]
        if isinstance(out, ClassificationOutput):
            names = [out.output or have[0]]
        elif isinstance(out, BoxesScoresLabelsOutput):
            names = [out.boxes, out.scores, out.labels]
        else:
            names = [out.boxes, out.scores]
        missing = [n for n in names if n not in have]
        if missing:
            raise ModelError(f"{self.path.name} has no output {', '.join(missing)} (outputs: {', '.join(have)})")
        return names

    def warm_up(self) -> None:
        """Run a zero tensor once: the first run allocates, and its output shapes are checked."""
        try:
            outputs = self.session.run(self.output_names, {self.input_name: np.zeros(self.input_shape, self.dtype)})
        except Exception as e:
            raise ModelError(f"{self.path.name} failed on a zero input of shape {self.input_shape}: "
                             f"{str(e).strip()[:300]}") from e
        self._check_outputs(outputs)

    def _check_outputs(self, outputs: list[np.ndarray]) -> None:
        out, n = self.card.output, len(self.card.labels)
        shapes = [tuple(o.shape) for o in outputs]
        if isinstance(out, ClassificationOutput):
            if outputs[0].size != n:
                raise ModelError(f"{self.path.name} output {self.output_names[0]} has shape {shapes[0]}, "
                                 f"expected {n} values for {n} labels")
        elif isinstance(out, SSDOutput):
            classes = n + (1 if out.background_class is not None else 0)
            boxes, scores = outputs
            if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[2] != classes \
                    or boxes.shape[1] != scores.shape[1]:
                raise ModelError(f"{self.path.name} SSD outputs have shapes boxes {shapes[0]}, scores {shapes[1]}; "
                                 f"expected [1,N,4] and [1,N,{classes}]")
        elif outputs[0].shape[-1:] != (4,):
            raise ModelError(f"{self.path.name} boxes output has shape {shapes[0]}, expected [N,4]")

    # -- preprocessing -----------------------------------------------------

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
        """BGR frame -> input tensor, and (scale, pad_x, pad_y) to map boxes back.

        The tensor is a buffer the next call overwrites: run it before preprocessing another frame.
        """
        spec = self.card.input
        h, w = image.shape[:2]
        if spec.resize == "letterbox":
            scale = min(spec.width / w, spec.height / h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            px, py = (spec.width - nw) // 2, (spec.height - nh) // 2
            canvas = np.full((spec.height, spec.width, 3), 114, np.uint8)
            canvas[py:py + nh, px:px + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            resized, geo = canvas, (scale, float(px), float(py))
        else:
            resized, geo = cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR), (0.0, 0.0, 0.0)
        out = self._out[0]
        if spec.layout == "NCHW":
            # planes copied straight into the input buffer, colour order chosen by index: no temporaries
            planes = cv2.split(resized)
            for ch, src in enumerate((2, 1, 0) if spec.color == "RGB" else (0, 1, 2)):
                out[ch] = planes[src]
            if self.dtype == np.float32:
                out *= self._gain[:, None, None]
                out -= self._offset[:, None, None]
        else:
            if spec.color == "RGB":
                resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
            if self.dtype == np.float32:
                np.multiply(resized, self._gain, out=out)
                out -= self._offset
            else:
                out[...] = resized
        return self._out, geo

    # -- inference ---------------------------------------------------------

    def infer(self, image: np.ndarray) -> Prediction:
        tensor, geo = self.preprocess(image)
        outputs = self.session.run(self.output_names, {self.input_name: tensor}, self._run_options)
        problem = nonfinite_outputs(outputs, self.output_names)
        if problem:
            # Decoding would hide it: clipping keeps NaN, score thresholds drop NaN boxes silently.
            raise NonFiniteOutput(f"{self.path.name}: {problem}")
        return self.decode(outputs, image.shape[1], image.shape[0], geo)

    def decode(self, outputs: list[np.ndarray], width: int, height: int,
               geo: tuple[float, float, float]) -> Prediction:
        out = self.card.output
        if isinstance(out, ClassificationOutput):
            return Prediction("classification", self.card.labels, classify(outputs[0], out.activation),
                              EMPTY_BOXES, np.zeros(0, np.float32), np.zeros(0, np.int64), 0.0)
        if isinstance(out, SSDOutput):
            boxes, scores, labels = decode_ssd(outputs[0][0], outputs[1][0], out, self.floor)
            fmt, normalized = out.box_format, out.normalized
        else:
            boxes, scores, labels = decode_bsl(outputs, out, self.floor, len(self.card.labels))
            fmt, normalized = out.box_format, out.normalized
        boxes = to_frame_xyxy(boxes, fmt, normalized, self.card.input.width, self.card.input.height,
                              width, height, geo)
        return Prediction("detection", self.card.labels, np.zeros(0, np.float32), boxes, scores, labels,
                          self.threshold)


# -- pure decoding functions ---------------------------------------------------

def nonfinite_outputs(outputs: list[np.ndarray], names: list[str]) -> str:
    """"" when every float output is finite, else which outputs hold how many NaN/inf values."""
    bad = []
    for name, out in zip(names, outputs):
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            n_nan = int(np.isnan(out).sum())
            bad.append(f"{name} has {n_nan} NaN and {int(out.size - np.isfinite(out).sum()) - n_nan} inf "
                       f"of {out.size} values")
    return "; ".join(bad)


def classify(raw: np.ndarray, activation: str) -> np.ndarray:
    x = raw.reshape(-1).astype(np.float64)
    if activation == "softmax":
        e = np.exp(x - x.max())
        x = e / e.sum()
    elif activation == "sigmoid":
        x = 1.0 / (1.0 + np.exp(-x))
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.array(keep, np.int64)


def decode_ssd(boxes: np.ndarray, scores: np.ndarray, out: SSDOutput,
               floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: scores >= floor, NMS; then the best max_detections over all classes."""
    if out.background_class is not None:
        scores = np.delete(scores, out.background_class, axis=1)
    all_b, all_s, all_l = [], [], []
    for c in range(scores.shape[1]):
        idx = np.nonzero(scores[:, c] >= floor)[0]
        if idx.size == 0:
            continue
        keep = idx[nms(_xyxy(boxes[idx], out.box_format), scores[idx, c], out.iou_threshold)]
        all_b.append(boxes[keep])
        all_s.append(scores[keep, c])
        all_l.append(np.full(keep.size, c, np.int64))
    if not all_b:
        return EMPTY_BOXES, np.zeros(0, np.float32), np.zeros(0, np.int64)
    b, s, lab = np.concatenate(all_b), np.concatenate(all_s), np.concatenate(all_l)
    top = np.argsort(-s, kind="stable")[:out.max_detections]
    return b[top].astype(np.float32), s[top].astype(np.float32), lab[top]


def decode_bsl(outputs: list[np.ndarray], out: BoxesScoresLabelsOutput, floor: float,
               n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = outputs[0].reshape(-1, 4).astype(np.float32)
    scores = outputs[1].reshape(-1).astype(np.float32)
    labels = outputs[2].reshape(-1).astype(np.int64) - out.label_offset
    keep = (scores >= floor) & (labels >= 0) & (labels < n_labels)
    return boxes[keep], scores[keep], labels[keep]


def _xyxy(boxes: np.ndarray, fmt: str) -> np.ndarray:
    b = boxes.astype(np.float32)
    if fmt == "xywh":
        return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)
    if fmt == "cxcywh":
        hw, hh = b[:, 2] / 2, b[:, 3] / 2
        return np.stack([b[:, 0] - hw, b[:, 1] - hh, b[:, 0] + hw, b[:, 1] + hh], axis=1)
    return b


def to_frame_xyxy(boxes: np.ndarray, fmt: str, normalized: bool, in_w: int, in_h: int, frame_w: int,
                  frame_h: int, geo: tuple[float, float, float]) -> np.ndarray:
    """Model-output boxes -> x1, y1, x2, y2 normalized to the original frame, clipped to [0, 1]."""
    b = _xyxy(boxes, fmt)
    if normalized:
        b = b * np.array([in_w, in_h, in_w, in_h], np.float32)
    scale, px, py = geo
    if scale:  # letterboxed: undo padding and scale, back to frame pixels
        b = (b - np.array([px, py, px, py], np.float32)) / scale
        b = b / np.array([frame_w, frame_h, frame_w, frame_h], np.float32)
    else:
        b = b / np.array([in_w, in_h, in_w, in_h], np.float32)
    b = np.clip(b, 0.0, 1.0)
    b[:, 2] = np.maximum(b[:, 2], b[:, 0])
    b[:, 3] = np.maximum(b[:, 3], b[:, 1])
    return b.astype(np.float32)
