"""Model cards, real onnxruntime sessions, decoding, external-data detection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from agent.model import ModelError, ModelRunner, nms, to_frame_xyxy
from agent.preprocess import Geometry
from agent.sampling import iou_matrix
from agent.onnxcheck import OnnxFormatError, external_data_tensors
from agent.synthetic import SyntheticCamera
from agent_helpers import LABELS, classifier_card, make_classifier

ROOT = Path(__file__).resolve().parents[1]
ULTRAFACE = ROOT.parent / "shared" / "models" / "ultraface" / "version-RFB-320.onnx"
ULTRAFACE_CARD = ROOT / "agent" / "cards" / "ultraface-rfb-320.card.toml"


def test_classifier_with_card_in_metadata(tmp_path):
    runner = ModelRunner.load(make_classifier(tmp_path / "m.onnx", version=3), ["tensorrt", "cuda", "cpu"])
    assert (runner.name, runner.version, runner.card.labels) == ("shapes", 3, LABELS)
    cam = SyntheticCamera(seed=0)
    preds = [runner.infer(cam.frame(i).image) for i in range(0, 50, 5)]
    for p in preds:
        assert p.scores.shape == (3,) and abs(float(p.scores.sum()) - 1) < 1e-4
    assert len({round(float(p.scores.max()), 3) for p in preds}) > 3  # confidence depends on the image


def test_sidecar_card_and_explicit_card_file(tmp_path):
    model = make_classifier(tmp_path / "m.onnx", embed_card=False)
    with pytest.raises(ModelError, match="no model card"):
        ModelRunner.load(model, ["cpu"])
    (tmp_path / "m.onnx.card.json").write_text(json.dumps(classifier_card(version=5)))
    assert ModelRunner.load(model, ["cpu"]).version == 5
    other = tmp_path / "other.json"
    other.write_text(json.dumps(classifier_card(version=9)))
    assert ModelRunner.load(model, ["cpu"], card_file=other).version == 9


def test_bad_models_get_clear_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        ModelRunner.load(junk, ["cpu"])
    model = make_classifier(tmp_path / "m.onnx", embed_card=False)
    card = tmp_path / "c.json"
    card.write_text(json.dumps({**classifier_card(), "labels": ["a", "b", "c", "d"]}))
    with pytest.raises(ModelError, match="expected 4 values for 4 labels"):
        ModelRunner.load(model, ["cpu"], card_file=card)
    card.write_text(json.dumps({**classifier_card(), "input": {"width": 64, "height": 64}}))
    with pytest.raises(ModelError, match=r"input image has shape \[1, 3, 32, 32\], the card says \[1, 3, 64, 64\]"):
        ModelRunner.load(model, ["cpu"], card_file=card)
    card.write_text(json.dumps({**classifier_card(), "task": "detection"}))
    with pytest.raises(ModelError, match="does not fit task"):
        ModelRunner.load(model, ["cpu"], card_file=card)


@pytest.mark.parametrize("layout,color,resize", [("NCHW", "RGB", "stretch"), ("NCHW", "BGR", "letterbox"),
                                                 ("NHWC", "RGB", "letterbox"), ("NHWC", "BGR", "stretch")])
def test_preprocess_matches_the_card(tmp_path, layout, color, resize):
    model = make_classifier(tmp_path / "m.onnx", embed_card=False, layout=layout)
    spec = {"layout": layout, "color": color, "resize": resize, "scale": 1.0, "mean": [10.0, 20.0, 30.0],
            "std": [2.0, 4.0, 8.0]}
    card = tmp_path / "c.json"
    card.write_text(json.dumps(classifier_card(**spec)))
    runner = ModelRunner.load(model, ["cpu"], card_file=card)
    image = SyntheticCamera(seed=8, width=64, height=32).frame(0).image
    tensor, geo = runner.preprocess(image)
    if resize == "letterbox":  # 64x32 into 32x32: scale 0.5, 8 rows of padding above and below
        assert geo == Geometry(0.5, 0.5, 0.0, 8.0)
        canvas = np.full((32, 32, 3), 114, np.uint8)
        canvas[8:24] = cv2.resize(image, (32, 16))
    else:
        canvas = cv2.resize(image, (32, 32))
    if color == "RGB":
        canvas = canvas[:, :, ::-1]
    want = (canvas.astype(np.float32) - np.array([10, 20, 30], np.float32)) / np.array([2, 4, 8], np.float32)
    want = want.transpose(2, 0, 1)[None] if layout == "NCHW" else want[None]
    assert tensor.shape == want.shape and np.allclose(tensor, want, atol=1e-4)
    assert runner.infer(image).scores.shape == (3,)


def test_nms_and_box_mapping():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.5).tolist() == [0, 2]
    assert nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.95).tolist() == [0, 1, 2]
    # letterbox: a 200x100 frame in a 100x100 input is scaled by 0.5 and padded 25 px top and bottom
    out = to_frame_xyxy(np.array([[0, 25, 50, 75]], np.float32), "xyxy", False, 100, 100, 200, 100, Geometry(0.5, 0.5, 0.0, 25.0))
    assert out.tolist() == [[0.0, 0.0, 0.5, 1.0]]
    cxcywh = to_frame_xyxy(np.array([[0.5, 0.5, 0.2, 0.4]], np.float32), "cxcywh", True, 10, 10, 10, 10, Geometry(1, 1, 0, 0))
    assert np.allclose(cxcywh, [[0.4, 0.3, 0.6, 0.7]])


def test_external_data_is_found_without_onnx(tmp_path):
    model_path = make_classifier(tmp_path / "m.onnx")
    assert external_data_tensors(model_path.read_bytes()) == []
    m = onnx.load(str(model_path))
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save(m, str(ext / "m.onnx"), save_as_external_data=True, location="weights.bin",
              size_threshold=0)
    assert sorted(external_data_tensors((ext / "m.onnx").read_bytes())) == ["b", "w"]
    with pytest.raises(OnnxFormatError):
        external_data_tensors(b"\x0b\x0c not a protobuf")


@pytest.mark.shared
def test_ultraface_runs_through_its_card(tmp_path):
    if not ULTRAFACE.exists():
        pytest.skip("../shared/models/ultraface is absent")
    model = tmp_path / "version-RFB-320.onnx"
    shutil.copy(ULTRAFACE, model)
    shutil.copy(ULTRAFACE_CARD, tmp_path / "version-RFB-320.onnx.card.toml")  # a sidecar, as documented
    runner = ModelRunner.load(model, ["cpu"], score_floor=0.3)
    assert (runner.card.task, runner.card.labels, runner.input_shape) == ("detection", ("face",), [1, 3, 240, 320])
    # A drawn face (skin disc, eyes, mouth) on a plain wall, twice the model's input size.
    img = np.full((480, 640, 3), (200, 210, 205), np.uint8)
    cv2.ellipse(img, (320, 240), (90, 120), 0, 0, 360, (140, 170, 220), -1)
    for x in (285, 355):
        cv2.circle(img, (x, 210), 12, (40, 30, 30), -1)
    cv2.ellipse(img, (320, 300), (35, 12), 0, 0, 180, (60, 60, 150), -1)
    pred = runner.infer(img)
    assert pred.boxes.shape[1] == 4 and pred.boxes.shape[0] == pred.box_scores.shape[0] == pred.box_labels.shape[0]
    assert pred.boxes.shape[0] <= runner.card.output.max_detections
    assert np.all((pred.boxes >= 0) & (pred.boxes <= 1))
    assert np.all(pred.box_scores >= 0.3) and set(pred.box_labels.tolist()) <= {0}
    faces = pred.boxes[pred.box_scores >= runner.threshold]
    assert len(faces) == 1  # NMS left one box on the one face
    drawn = np.array([[230 / 640, 120 / 480, 410 / 640, 360 / 480]], np.float32)
    assert iou_matrix(faces, drawn)[0, 0] > 0.6
    blank = runner.infer(np.full((240, 320, 3), 128, np.uint8))
    assert (blank.box_scores >= runner.threshold).sum() == 0  # a grey wall has no faces
