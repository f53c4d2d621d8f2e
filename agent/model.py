"""Run an ONNX model described by a model card: preprocess, infer, decode.

The card (protocol.modelcard) says how to feed the model and how to read its
outputs, so the agent runs models it did not produce. A ModelRunner is built
once per model version: load, check the card against the graph, warm up with
a zero tensor, check the output shapes. Any failure is a ModelError whose
message says what is wrong, and nothing half-loaded is ever returned.
Preprocessing lives in agent.preprocess, the pure decoders in agent.decode.

``load_runner(path)`` / ``runner.predict(bgr)`` is the small interface other
code (the server's teacher, replay, the gate) uses; the agent's inference
thread calls ``infer`` (the same). A runner is for one thread at a time: it
reuses its input buffer. Nothing here starts threads or waits on anything but
onnxruntime.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from protocol.embedding import MAX_EMBEDDING_DIM
from protocol.errors import ProtocolError
from protocol.modelcard import (CARD_METADATA_KEY, BoxesScoresLabelsOutput, ClassificationOutput, ModelCard,
                                SSDOutput, YoloOutput, YoloxOutput, card_from_dict, card_from_json, sidecar_card)

from .decode import (EMPTY_BOXES, OutputShapeError, classify, decode_bsl, decode_ssd, decode_yolo, decode_yolox,
                     embedding_vector, make_grid, nms, nonfinite_outputs, to_frame_detections, to_frame_xyxy, yolo_rows,
                     yolox_rows)
from .preprocess import Geometry, Preprocessor

__all__ = ["EMPTY_BOXES", "ModelError", "ModelRunner", "NonFiniteOutput", "Prediction", "load_runner", "nms",
           "nonfinite_outputs", "to_frame_xyxy"]

log = logging.getLogger(__name__)

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "cpu": "CPUExecutionProvider"}
SHORT_PROVIDER = {v: k for k, v in PROVIDERS.items()}


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
    embedding: np.ndarray | None = field(default=None, repr=False)  # [D] L2-normalized float32, or None
    frame_size: tuple[int, int] = (0, 0)  # (width, height) of the frame it was made from

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

    @property
    def pixel_boxes(self) -> np.ndarray:
        """``boxes`` in pixels of the frame: [N, 4] float32 x1, y1, x2, y2."""
        w, h = self.frame_size
        return (self.boxes * np.array([w, h, w, h], np.float32)).astype(np.float32)

    @property
    def box_label_names(self) -> list[str]:
        return [self.labels[int(i)] for i in self.box_labels]


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


def choose_providers(wanted: Sequence[str]) -> list[str]:
    """onnxruntime names of the wanted providers this onnxruntime build has, CPU as the last resort."""
    unknown = [w for w in wanted if w not in PROVIDERS]
    if unknown:
        raise ModelError(f"unknown execution provider {', '.join(unknown)} (known: {', '.join(PROVIDERS)})")
    available = set(ort.get_available_providers())
    chosen = [PROVIDERS[w] for w in wanted if PROVIDERS[w] in available]
    return chosen or ["CPUExecutionProvider"]


def provider_report(wanted: Sequence[str], active: Sequence[str]) -> tuple[str, str]:
    """(the provider the session runs on, a warning when a requested one is not in use, else "")."""
    running = SHORT_PROVIDER.get(active[0], active[0]) if active else ""
    missing = [w for w in wanted if PROVIDERS[w] not in active]
    if not missing:
        return running, ""
    have = ", ".join(SHORT_PROVIDER.get(p, p) for p in ort.get_available_providers())
    return running, (f"requested execution provider {', '.join(missing)} not available (this onnxruntime has "
                     f"{have}); running on {running}")


def open_session(path: Path, providers: Sequence[str], intra: int = 0, inter: int = 0) -> ort.InferenceSession:
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

    def __init__(self, session: ort.InferenceSession, card: ModelCard, path: Path, score_floor: float = 1.0,
                 requested_providers: Sequence[str] = ()) -> None:
        self.session = session
        self.card = card
        self.path = path
        self.input_name = card.input.name or session.get_inputs()[0].name
        self._prep = Preprocessor(card.input)
        self.input_shape, self.dtype = self._prep.shape, self._prep.dtype
        self._check_input()
        threshold = card.output.score_threshold if card.task == "detection" else 0.0
        self.threshold = threshold
        self.floor = min(threshold, score_floor)  # keep candidates below the threshold for band strategies
        self.output_names = self._output_names()
        self._grid = make_grid(card.output.strides, card.input.width, card.input.height) \
            if isinstance(card.output, YoloxOutput) else None
        self.provider, self.provider_warning = provider_report(requested_providers, session.get_providers())
        if self.provider_warning:
            log.warning("%s: %s", path.name, self.provider_warning)
        # A model failing on every frame would print a kernel error per frame; the agent logs them rate-limited.
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4
        self.warm_up()

    @classmethod
    def load(cls, path: Path, providers: Sequence[str], card: ModelCard | None = None,
             card_file: Path | None = None, intra: int = 0, inter: int = 0,
             score_floor: float = 1.0) -> "ModelRunner":
        session = open_session(path, providers, intra, inter)
        card = card or resolve_card(session, path, card_file)
        return cls(session, card, path, score_floor, providers)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> int:
        return self.card.version

    def _check_input(self) -> None:
        spec, name = self.card.input, self.path.name
        inputs = {i.name: i for i in self.session.get_inputs()}
        if self.input_name not in inputs:
            raise ModelError(f"card input {self.input_name!r} is not an input of {name} ({', '.join(inputs)})")
        got, want = list(inputs[self.input_name].shape), self.input_shape
        axis = 1 if spec.layout == "NCHW" else 3
        if len(got) == 4 and isinstance(got[axis], int) and got[axis] > 0 and got[axis] != spec.channels:
            raise ModelError(f"{name} input {self.input_name} has {got[axis]} channel(s) (shape {got}); the card "
                             f"says color {spec.color} with {spec.channels} channel(s) in {spec.layout}")
        if not _dims_fit(got, want):
            raise ModelError(f"{name} input {self.input_name} has shape {got}, the card says {want}")
        kind = inputs[self.input_name].type  # 'tensor(float)' / 'tensor(uint8)'
        expected = "tensor(float)" if spec.dtype == "float32" else "tensor(uint8)"
        if kind != expected:
            raise ModelError(f"{name} input {self.input_name} is {kind}, the card says dtype {spec.dtype}")

    def _output_names(self) -> list[str]:
        out = self.card.output
        have = [o.name for o in self.session.get_outputs()]
        if isinstance(out, ClassificationOutput):
            names = [out.output or have[0]]
        elif isinstance(out, BoxesScoresLabelsOutput):
            names = [out.boxes, out.scores, out.labels]
        elif isinstance(out, SSDOutput):
            names = [out.boxes, out.scores]
        elif isinstance(out, YoloOutput):
            names = [out.output or have[0]]
        else:
            names = list(out.output_names()) or [have[0]]
        if self.card.embedding_output:
            names.append(self.card.embedding_output)
        missing = [n for n in names if n not in have]
        if missing:
            what = "embedding output" if missing == [self.card.embedding_output] else "output"
            raise ModelError(f"{self.path.name} has no {what} {', '.join(missing)} (outputs: {', '.join(have)})")
        return names

    def warm_up(self) -> None:
        """Run a zero tensor once: the first run allocates, and its output shapes are checked."""
        try:
            outputs = self.session.run(self.output_names, {self.input_name: np.zeros(self.input_shape, self.dtype)})
        except Exception as e:
            raise ModelError(f"{self.path.name} failed on a zero input of shape {self.input_shape}: "
                             f"{str(e).strip()[:300]}") from e
        try:
            self._check_outputs(outputs)
        except OutputShapeError as e:
            raise ModelError(f"{self.path.name}: {e}") from e

    def _check_outputs(self, outputs: list[np.ndarray]) -> None:
        out, n = self.card.output, len(self.card.labels)
        if self.card.embedding_output:
            *outputs, emb = outputs
            size = int(np.prod(emb.shape[1:]))
            if emb.ndim not in (2, 4) or emb.shape[0] != 1 or (emb.ndim == 4 and emb.shape[2:] != (1, 1)) \
                    or not 0 < size <= MAX_EMBEDDING_DIM:
                raise OutputShapeError(f"embedding output {self.card.embedding_output} has shape {list(emb.shape)}, "
                                       f"expected [1, D] or [1, D, 1, 1] with D <= {MAX_EMBEDDING_DIM}")
        shapes = [list(o.shape) for o in outputs]
        names = self.output_names
        if isinstance(out, ClassificationOutput):
            if outputs[0].size != n:
                raise OutputShapeError(f"output {names[0]} has shape {shapes[0]}, expected {n} values for "
                                       f"{n} labels")
        elif isinstance(out, SSDOutput):
            classes = n + (1 if out.background_class is not None else 0)
            boxes, scores = outputs
            if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[2] != classes \
                    or boxes.shape[1] != scores.shape[1]:
                raise OutputShapeError(f"SSD outputs have shapes boxes {shapes[0]}, scores {shapes[1]}; "
                                       f"expected [1,N,4] and [1,N,{classes}]")
        elif isinstance(out, YoloOutput):
            yolo_rows(outputs[0], out, n, names[0])
        elif isinstance(out, YoloxOutput):
            yolox_rows(outputs, names, out, self._grid, n)
        elif outputs[0].shape[-1:] != (4,):
            raise OutputShapeError(f"boxes output has shape {shapes[0]}, expected [N,4]")

    # -- inference ---------------------------------------------------------

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """BGR frame -> input tensor, and the geometry that maps boxes back.

        The tensor is a buffer the next call overwrites: run it before preprocessing another frame.
        """
        return self._prep(image)

    def infer(self, image: np.ndarray) -> Prediction:
        tensor, geo = self.preprocess(image)
        outputs = self.session.run(self.output_names, {self.input_name: tensor}, self._run_options)
        problem = nonfinite_outputs(outputs, self.output_names)
        if problem:
            # Decoding would hide it: clipping keeps NaN, score thresholds drop NaN boxes silently.
            raise NonFiniteOutput(f"{self.path.name}: {problem}")
        return self.decode(outputs, image.shape[1], image.shape[0], geo)

    predict = infer  # the name other code reads best: runner.predict(bgr_frame)

    def decode(self, outputs: list[np.ndarray], width: int, height: int, geo: Geometry) -> Prediction:
        card, out, n = self.card, self.card.output, len(self.card.labels)
        embedding = None
        if card.embedding_output:
            *outputs, raw = outputs
            embedding = embedding_vector(raw)
        if isinstance(out, ClassificationOutput):
            return Prediction("classification", card.labels, classify(outputs[0], out.activation), EMPTY_BOXES,
                              np.zeros(0, np.float32), np.zeros(0, np.int64), 0.0, embedding, (width, height))
        fmt, normalized = "xyxy", False
        if isinstance(out, SSDOutput):
            boxes, scores, labels = decode_ssd(outputs[0][0], outputs[1][0], out, self.floor)
            fmt, normalized = out.box_format, out.normalized
        elif isinstance(out, BoxesScoresLabelsOutput):
            boxes, scores, labels = decode_bsl(outputs, out, self.floor, n)
            fmt, normalized = out.box_format, out.normalized
        elif isinstance(out, YoloOutput):
            boxes, scores, labels = decode_yolo(outputs[0], out, n, self.floor, self.output_names[0])
            normalized = out.normalized
        else:
            boxes, scores, labels = decode_yolox(outputs, self.output_names, out, self._grid, n, self.floor)
        boxes, scores, labels = to_frame_detections((boxes, scores, labels), fmt, normalized, card.input.width,
                                                    card.input.height, width, height, geo)
        return Prediction("detection", card.labels, np.zeros(0, np.float32), boxes, scores, labels,
                          self.threshold, embedding, (width, height))


def load_runner(model_path: str | Path, card: ModelCard | str | Path | None = None,
                providers: Sequence[str] = ("cpu",), score_floor: float | None = None, threads: int = 0) -> ModelRunner:
    """A loaded, checked, warmed-up runner for any ONNX model with a card.

    ``card``: a ModelCard, a card file (``.json``/``.toml``), or None for the
    model's metadata, else a sidecar ``<model>.onnx.card.json/.toml``.
    ``score_floor``: keep boxes from this score (default: the card's
    ``score_threshold``). ``providers``: ``cpu``, ``cuda``, ``tensorrt`` in
    order of preference; a missing one is logged as a warning and named in
    ``runner.provider_warning``; ``runner.provider`` is the one in use.
    Raises ModelError naming what does not fit.
    """
    path = Path(model_path)
    card_obj = card if isinstance(card, ModelCard) else None
    card_file = Path(card) if card is not None and card_obj is None else None
    return ModelRunner.load(path, list(providers), card=card_obj, card_file=card_file, intra=threads,
                            score_floor=1.0 if score_floor is None else score_floor)
