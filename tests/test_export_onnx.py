"""Exported models: one file, a valid card, onnxruntime agreeing with torch; a mismatch fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

from protocol.modelcard import CARD_METADATA_KEY, card_from_json
from trainer.synthetic import get_generator
from trainer.train.config import TrainConfig
from trainer.train.errors import ExportMismatch
from trainer.train.export import build_card, export_onnx, read_card
from trainer.train.models import ModelSpec, build_model, get_spec
from trainer.train.round import run_round


def preprocess(path: Path, card) -> np.ndarray:
    """What an agent does with the card alone: resize, scale, normalize, NCHW."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB").resize((card.input.width, card.input.height), Image.BILINEAR), np.float32)
    arr = (arr * card.input.scale - np.array(card.input.mean, np.float32)) / np.array(card.input.std, np.float32)
    return arr.transpose(2, 0, 1)[None]


@pytest.mark.slow
def test_exported_classifier_runs_from_its_card_and_matches_torch(tmp_path: Path):
    examples = get_generator("shapes").generate(45, np.random.default_rng(2), tmp_path / "img")
    cfg = TrainConfig(input_size=32, epochs=1, batch_size=16, num_workers=0)
    result = run_round(examples, cfg, tmp_path / "out", name="shapes-cls", version=7)
    path = tmp_path / "out" / "model.onnx"
    assert not list((tmp_path / "out").glob("*.onnx.data"))
    proto = onnx.load(str(path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    card = card_from_json({p.key: p.value for p in proto.metadata_props}[CARD_METADATA_KEY])
    assert card == read_card(path)
    assert (card.name, card.version, card.task, card.labels) == ("shapes-cls", 7, "classification", tuple(result.labels))
    assert (card.input.width, card.input.height, card.input.layout, card.input.name) == (32, 32, "NCHW", "images")
    assert card.output.type == "classification" and card.output.activation == "softmax"
    assert card.output.output == "logits" and card.metrics["accuracy"] == result.metrics["accuracy"]
    assert card.training["round"] == 0 and card.training["dataset_version"] == result.dataset_version

    ckpt = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    model = build_model(get_spec(ckpt["model_name"]), len(ckpt["labels"]), ckpt["input_size"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.concatenate([preprocess(e.image_path, card) for e in examples[:8]])
    (logits,) = session.run(["logits"], {"images": batch})
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    assert logits.shape == (8, 3)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


def test_tiny_detector_export_describes_its_dense_outputs(tmp_path: Path):
    spec = get_spec("tiny_det")
    model = build_model(spec, 2, 64).eval()
    card = build_card(spec, "det", 1, ["a", "b"], 64, 0.4, {"map": 0.5}, {"round": 1})
    sample = torch.rand(3, 3, 64, 64)
    check = export_onnx(model, spec, card, tmp_path / "det.onnx", sample)
    assert check["images"] == 3 and check["max_abs_diff"] < 1e-4
    got = read_card(tmp_path / "det.onnx")
    assert got.output.type == "ssd" and got.output.normalized and got.output.background_class is None
    assert got.output.score_threshold == 0.4 and got.output.box_format == "xyxy"
    session = ort.InferenceSession(str(tmp_path / "det.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(["boxes", "scores"], {"images": sample[:1].numpy()})
    n = (64 // 8) ** 2
    assert boxes.shape == (1, n, 4) and scores.shape == (1, n, 2)  # one score column per label, no background
    assert 0 <= boxes.min() and boxes.max() <= 1 and 0 <= scores.min() and scores.max() <= 1


class _Unstable(nn.Module):
    """Different on every call, so torch and onnxruntime can never agree."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3)) + torch.rand(x.shape[0], 2)


def test_a_mismatch_fails_the_export_and_writes_nothing(tmp_path: Path):
    spec = ModelSpec("unstable", "classification", lambda c, s: _Unstable(), 16, "logits")
    card = build_card(spec, "bad", 0, ["a", "b"], 16, 0.5, {}, {})
    with pytest.raises(ExportMismatch, match="differs from torch"):
        export_onnx(_Unstable(), spec, card, tmp_path / "bad.onnx", torch.rand(2, 3, 16, 16))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_torchvision_detector_export_is_checked_detection_by_detection(tmp_path: Path):
    spec = get_spec("fasterrcnn_mobilenet_v3_large_320_fpn")
    torch.manual_seed(0)
    model = build_model(spec, 3, 128).eval()
    card = build_card(spec, "frcnn", 0, ["a", "b", "c"], 128, 0.0, {}, {})
    check = export_onnx(model, spec, card, tmp_path / "frcnn.onnx", torch.rand(2, 3, 128, 128))
    assert check["images"] == 2 and check["detections_compared"] > 0 and check["max_abs_diff"] < 1e-3
    got = read_card(tmp_path / "frcnn.onnx")
    assert got.output.type == "boxes_scores_labels" and got.output.label_offset == 1 and not got.output.normalized
    assert (got.input.mean, got.input.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # it normalizes inside
    assert got.embedding_output == "embedding"  # the FPN's coarsest map, pooled and projected
    session = ort.InferenceSession(str(tmp_path / "frcnn.onnx"), providers=["CPUExecutionProvider"])
    (emb,) = session.run(["embedding"], {"images": torch.rand(1, 3, 128, 128).numpy()})
    assert emb.shape == (1, 128) and abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5


@pytest.mark.parametrize("name, size, dim", [("small_cnn", 32, 128), ("tiny_det", 64, 64),
                                             ("mobilenet_v3_small", 64, 128), ("mobilenet_v2", 64, 128)])
def test_exported_models_output_a_named_compact_embedding(tmp_path: Path, name: str, size: int, dim: int):
    """The second output: pooled features, projected to <= 128 dims, unit length, named in the card,
    the same in onnxruntime as in torch, and the agent's runner returns it with each prediction."""
    from agent.model import ModelRunner
    from trainer.train.models import compact_embedding

    spec = get_spec(name)
    torch.manual_seed(0)
    model = build_model(spec, 3, size).eval()
    card = build_card(spec, name, 1, ["a", "b", "c"], size, 0.3, {}, {})
    assert card.embedding_output == "embedding"
    sample = torch.rand(4, 3, size, size)
    export_onnx(model, spec, card, tmp_path / "m.onnx", sample)
    assert read_card(tmp_path / "m.onnx").embedding_output == "embedding"
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()][-1] == "embedding"
    (emb,) = session.run(["embedding"], {"images": sample.numpy()})
    assert emb.shape == (4, dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(emb[0], emb[1])  # it depends on the image
    # the model itself carries no hook afterwards: a plain forward is unchanged and captures nothing
    with torch.no_grad():
        out = model(sample) if spec.kind == "logits" else model.dense(sample)
    assert out is not None and not model.get_submodule(spec.embedding[0])._forward_hooks
    # the agent's runtime reads it by the card's name
    image = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
    pred = ModelRunner.load(tmp_path / "m.onnx", ["cpu"]).infer(image)
    assert pred.embedding is not None and pred.embedding.shape == (dim,)
    # wide features are projected by the same fixed matrix every time
    wide = torch.rand(2, 576)
    np.testing.assert_allclose(compact_embedding(wide), compact_embedding(wide))


def test_a_model_without_an_embedding_tap_exports_as_before(tmp_path: Path):
    spec = ModelSpec("plain", "classification", lambda c, s: nn.Sequential(nn.Conv2d(3, c, 3), nn.AdaptiveAvgPool2d(1),
                                                                            nn.Flatten()), 16, "logits")
    card = build_card(spec, "plain", 0, ["a", "b"], 16, 0.5, {}, {})
    assert card.embedding_output is None
    export_onnx(spec.build(2, 16).eval(), spec, card, tmp_path / "p.onnx", torch.rand(2, 3, 16, 16))
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
