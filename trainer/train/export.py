"""Single-file ONNX export with the model card in its metadata, verified by onnxruntime.

The exported graph takes normalized NCHW float input named ``images``; what
comes out depends on the model's ``kind`` and is described exactly by the
card's output spec, so an agent needs nothing but the file. Models whose spec
says where to tap features also output ``embedding`` ([B, D], L2-normalized,
D <= 128: see ``trainer.train.models.EmbeddingTap``), named in the card's
``embedding_output``.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from protocol.modelcard import (CARD_METADATA_KEY, BoxesScoresLabelsOutput, ClassificationOutput, InputSpec,
                                ModelCard, SSDOutput)
from trainer.train.checkpoint import atomic_write_bytes
from trainer.train.errors import ExportMismatch, TrainingError
from trainer.train.models import EmbeddingTap, ModelSpec

log = logging.getLogger(__name__)


class _Dense(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model.dense(images)


class _TorchvisionDet(nn.Module):
    """torchvision detectors take a list of images; the exported graph takes a batch of one."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        out = self.model([images[0]])[0]
        return out["boxes"], out["scores"], out["labels"]


class _WithEmbedding(nn.Module):
    """The graph's own outputs, then the embedding tapped from the same forward pass."""

    def __init__(self, graph: nn.Module, model: nn.Module, where: tuple[str, str]):
        super().__init__()
        self.graph = graph
        self.tap = EmbeddingTap(model, where)

    def forward(self, images: torch.Tensor):
        out = self.graph(images)
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        return (*out, self.tap.embedding())


EMBEDDING_OUTPUT = "embedding"


def build_card(spec: ModelSpec, name: str, version: int, labels: Sequence[str], input_size: int,
               score_threshold: float, metrics: dict[str, float], training: dict) -> ModelCard:
    inp = InputSpec(name="images", width=input_size, height=input_size, layout="NCHW", color="RGB",
                    dtype="float32", scale=1.0 / 255.0, mean=spec.mean, std=spec.std, resize="stretch")
    if spec.kind == "logits":
        output = ClassificationOutput(output="logits", activation="softmax")
    elif spec.kind == "dense":
        output = SSDOutput(boxes="boxes", scores="scores", box_format="xyxy", normalized=True,
                           background_class=None, score_threshold=score_threshold)
    else:
        output = BoxesScoresLabelsOutput(boxes="boxes", scores="scores", labels="labels", box_format="xyxy",
                                         normalized=False, label_offset=1, score_threshold=score_threshold)
    return ModelCard(name=name, version=version, task=spec.task, labels=tuple(labels), input=inp, output=output,
                     embedding_output=EMBEDDING_OUTPUT if spec.embedding else None, metrics=metrics,
                     training=training)


def _graph(spec: ModelSpec, model: nn.Module) -> tuple[nn.Module, list[str], dict]:
    if spec.kind == "logits":
        graph, names, dynamic = model, ["logits"], {"images": {0: "batch"}, "logits": {0: "batch"}}
    elif spec.kind == "dense":
        graph, names, dynamic = _Dense(model), ["boxes", "scores"], {"images": {0: "batch"}, "boxes": {0: "batch"},
                                                                      "scores": {0: "batch"}}
    else:
        graph, names, dynamic = _TorchvisionDet(model), ["boxes", "scores", "labels"], {
            "boxes": {0: "n"}, "scores": {0: "n"}, "labels": {0: "n"}}
    if spec.embedding is None:
        return graph, names, dynamic
    if "images" in dynamic:
        dynamic[EMBEDDING_OUTPUT] = {0: "batch"}
    return _WithEmbedding(graph, model, spec.embedding), names + [EMBEDDING_OUTPUT], dynamic


def export_onnx(model: nn.Module, spec: ModelSpec, card: ModelCard, path: Path, sample: torch.Tensor,
                opset: int = 17, atol: float = 1e-3, rtol: float = 1e-3) -> dict:
    """Export, embed the card, verify against torch on ``sample`` (normalized images), write atomically.

    Raises ``ExportMismatch`` (and writes nothing) when onnxruntime disagrees.
    """
    model = model.cpu().eval()
    graph, output_names, dynamic = _graph(spec, model)
    try:
        data = _export_bytes(graph, sample, output_names, dynamic, opset, card)
        # Filtered detector outputs: scores near torchvision's own tiny threshold may flip
        # between runtimes, so compare what an agent would keep.
        keep = card.output.score_threshold if spec.kind == "torchvision_det" else None
        report = verify(graph, data, sample, output_names, atol, rtol, keep)
    finally:
        if isinstance(graph, _WithEmbedding):
            graph.tap.remove()  # the trained model goes on without the hook
    atomic_write_bytes(Path(path), data)
    if Path(str(path) + ".data").exists():
        raise TrainingError(f"{path}.data exists: the model must be a single file")
    return report


def _export_bytes(graph: nn.Module, sample: torch.Tensor, output_names: list[str], dynamic: dict, opset: int,
                  card: ModelCard) -> bytes:
    import onnx

    # A fresh wrapper is in train mode, and the exporter restores that mode on
    # everything inside it afterwards: evaluate in eval mode or BN uses batch stats.
    graph.eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (dynamo=False): it writes one self-contained file.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)  # torchvision detectors' tracing chatter
        torch.onnx.export(graph, (sample[:1],), buf, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=output_names, dynamic_axes=dynamic)
    proto = onnx.load_from_string(buf.getvalue())
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise TrainingError("ONNX export produced external data; the model must be a single file")
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_METADATA_KEY, card.to_json()
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def verify(graph: nn.Module, onnx_bytes: bytes, images: torch.Tensor, output_names: list[str],
           atol: float, rtol: float, score_keep: float | None = None) -> dict:
    """Run the same images through torch and onnxruntime; raise if any output differs.

    With ``score_keep``, the graph takes one image and returns (boxes, scores,
    labels) and maybe an embedding: images go one at a time and only
    detections scoring at least that much are compared (the embedding whole).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    graph.eval()
    batches = [images[i:i + 1] for i in range(len(images))] if score_keep is not None else [images]
    worst, compared = 0.0, 0
    for batch in batches:
        with torch.no_grad():
            expected = graph(batch)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        expected = [e.numpy() for e in expected]
        got = session.run(output_names, {"images": batch.numpy().astype(np.float32)})
        if score_keep is not None:
            extra_e, extra_g = expected[3:], got[3:]
            expected = [x[expected[1] >= score_keep] for x in expected[:3]]
            got = _pair_detections(expected, [x[got[1] >= score_keep] for x in got[:3]], atol, rtol)
            compared += len(expected[1])
            expected, got = expected + extra_e, got + extra_g
        worst = max(worst, _compare(output_names, expected, got, atol, rtol))
    report = {"images": len(images), "max_abs_diff": worst, "atol": atol, "rtol": rtol}
    if score_keep is not None:
        report["detections_compared"] = compared
        if not compared:
            log.warning("ONNX check compared no detection: none scored %.2f or more on the check images", score_keep)
    log.info("ONNX verified on %d image(s): max abs difference %.3g", len(images), worst)
    return report


def _compare(names: list[str], expected: list[np.ndarray], got: list[np.ndarray], atol: float, rtol: float) -> float:
    worst = 0.0
    for name, e, g in zip(names, expected, got):
        if e.shape != g.shape:
            raise ExportMismatch(f"onnxruntime output {name!r} has shape {g.shape}, torch {e.shape}")
        if e.size:
            diff = float(np.max(np.abs(e.astype(np.float64) - g.astype(np.float64))))
            worst = max(worst, diff)
            if not np.allclose(g, e, atol=atol, rtol=rtol):
                raise ExportMismatch(f"onnxruntime output {name!r} differs from torch by up to {diff:.3g} "
                                     f"(atol {atol}, rtol {rtol}); the round is not published")
    return worst


def _pair_detections(expected: list[np.ndarray], got: list[np.ndarray], atol: float, rtol: float) -> list[np.ndarray]:
    """Reorder onnxruntime's (boxes, scores, labels) to match torch's row by row.

    Detections with nearly equal scores may come out in another order from
    another runtime; each torch detection takes the unused onnxruntime one of
    the same label and score with the closest box. Unpaired rows stay where
    they are and fail the comparison that follows.
    """
    boxes, scores, labels = expected
    if len(got[1]) != len(scores):
        return got
    order, free = [], set(range(len(scores)))
    for i in range(len(scores)):
        near = [j for j in free if got[2][j] == labels[i] and abs(got[1][j] - scores[i]) <= atol + rtol * abs(scores[i])]
        if not near:
            return got
        j = min(near, key=lambda j: float(np.abs(got[0][j] - boxes[i]).max()))
        order.append(j)
        free.discard(j)
    return [x[order] for x in got]


def read_card(path: str | Path) -> ModelCard:
    """The card embedded in an exported model."""
    import onnx

    from protocol.modelcard import card_from_json

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == CARD_METADATA_KEY:
            return card_from_json(entry.value, str(path))
    raise TrainingError(f"{path} has no {CARD_METADATA_KEY} metadata")
