"""YOLO-family model cards on real onnxruntime sessions whose outputs are known, so the boxes are too.

Each model (tests/agent_helpers.make_constant_model) emits fixed tensors that encode three boxes chosen in
frame pixels: A (class 0), a weaker near-copy of A (suppressed by NMS) and B (class 1, overlapping A), plus
a row under the score floor. The runner must give back A and B in frame pixels, for every tensor layout and
both letterbox placements.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from agent.model import ModelError, NonFiniteOutput, load_runner
from agent.preprocess import Geometry
from agent_helpers import make_constant_model
from protocol.errors import ProtocolError
from protocol.modelcard import card_from_dict

FRAME_W, FRAME_H, SIZE = 200, 100, 64
LABELS = ["car", "person"]
# frame-pixel boxes (x1, y1, x2, y2), objectness, class scores
A = ((50, 20, 150, 70), 0.9, (0.9, 0.05))  # score 0.81, class 0
A_DUP = ((55, 20, 150, 72), 0.8, (0.9, 0.1))  # 0.72, class 0, IoU with A > 0.8: suppressed
B = ((60, 25, 140, 75), 1.0, (0.1, 0.7))  # 0.70, class 1: kept by per-class NMS, not by class-agnostic
LOW = ((0, 0, 30, 40), 0.2, (0.5, 0.5))  # 0.10: under the floor
ROWS = (A, A_DUP, B, LOW)
STRIDES = (8, 16, 32)
STRIDE_OF = {0: 16, 1: 32, 2: 8, 3: 8}  # where each box sits in the raw YOLOX grid


def frame() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(1, 255, (FRAME_H, FRAME_W, 3), dtype=np.uint8)  # never black: the NaN model needs light


def geometry(placement: str) -> Geometry:
    scale = min(SIZE / FRAME_W, SIZE / FRAME_H)
    nw, nh = round(FRAME_W * scale), round(FRAME_H * scale)
    pad = ((SIZE - nw) // 2, (SIZE - nh) // 2) if placement == "center" else (0, 0)
    return Geometry(nw / FRAME_W, nh / FRAME_H, float(pad[0]), float(pad[1]))


def input_box(box, geo: Geometry) -> np.ndarray:
    """A frame-pixel box as cx, cy, w, h in model-input pixels."""
    x1, y1, x2, y2 = box
    x1, x2 = x1 * geo.scale_x + geo.pad_x, x2 * geo.scale_x + geo.pad_x
    y1, y2 = y1 * geo.scale_y + geo.pad_y, y2 * geo.scale_y + geo.pad_y
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], np.float32)


def card(output: dict, **input_spec) -> dict:
    spec = {"width": SIZE, "height": SIZE, "resize": "letterbox", "scale": 1.0, **input_spec}
    return {"name": "yolo-test", "version": 1, "task": "detection", "labels": LABELS, "input": spec,
            "output": {"score_threshold": 0.5, "iou_threshold": 0.5, **output}}


def decoded_rows(geo: Geometry, objectness: bool, n: int = 10) -> np.ndarray:
    """Decoded-YOLO rows [n, 4(+1)+C], zero rows as padding."""
    k = 4 + (1 if objectness else 0) + len(LABELS)
    rows = np.zeros((n, k), np.float32)
    for i, (box, obj, cls) in enumerate(ROWS):
        cls = np.array(cls, np.float32)
        rows[i] = np.concatenate([input_box(box, geo), [obj], cls]) if objectness else \
            np.concatenate([input_box(box, geo), obj * cls])
    return rows


def grid_rows(geo: Geometry, sigmoid: bool = False) -> list[np.ndarray]:
    """Raw YOLOX cells per stride, [h*w, 4+1+C] each: dx, dy, dw, dh, objectness, classes."""
    per = []
    for s in STRIDES:
        g = SIZE // s
        rows = np.zeros((g * g, 5 + len(LABELS)), np.float32)
        rows[:, 4:] = -30.0 if sigmoid else 0.0  # empty cells: probability 0
        per.append(rows)
    for i, (box, obj, cls) in enumerate(ROWS):
        s = STRIDE_OF[i]
        cx, cy, w, h = input_box(box, geo)
        gx, gy = int(cx // s), int(cy // s)
        probs = np.clip(np.array([obj, *cls], np.float64), 1e-7, 1 - 1e-7)
        scores = np.log(probs / (1 - probs)) if sigmoid else probs
        per[STRIDES.index(s)][gy * (SIZE // s) + gx] = [cx / s - gx, cy / s - gy, math.log(w / s),
                                                        math.log(h / s), *scores]
    return per


def run(tmp_path, outputs: dict, card_dict: dict, image=None, **model_kw):
    model_kw.setdefault("input_shape", (1, 3, SIZE, SIZE))
    model = make_constant_model(tmp_path / "m.onnx", outputs, **model_kw)
    (tmp_path / "m.onnx.card.json").write_text(json.dumps(card_dict))
    runner = load_runner(model)
    return runner, runner.predict(frame() if image is None else image)


def assert_boxes(pred, want: list[tuple], scores: list[float], labels: list[int]) -> None:
    assert pred.box_labels.tolist() == labels
    assert np.allclose(pred.box_scores, scores, atol=1e-4), pred.box_scores
    assert np.allclose(pred.pixel_boxes, np.array(want, np.float32), atol=0.05), pred.pixel_boxes
    assert pred.frame_size == (FRAME_W, FRAME_H)


@pytest.mark.parametrize("placement", ["center", "top_left"])
def test_yolo_v5_rows_with_objectness(tmp_path, placement):
    geo = geometry(placement)
    spec = card({"type": "yolo"}, letterbox=placement)
    _, pred = run(tmp_path, {"output0": decoded_rows(geo, True)[None]}, spec)
    assert_boxes(pred, [A[0], B[0]], [0.81, 0.70], [0, 1])


@pytest.mark.parametrize("placement", ["center", "top_left"])
def test_yolo_v8_transposed_without_objectness(tmp_path, placement):
    geo = geometry(placement)
    spec = card({"type": "yolo", "transposed": True, "objectness": False}, letterbox=placement)
    _, pred = run(tmp_path, {"output0": decoded_rows(geo, False).T[None]}, spec)
    assert_boxes(pred, [A[0], B[0]], [0.81, 0.70], [0, 1])


def test_class_agnostic_nms_and_multi_label(tmp_path):
    geo = geometry("center")
    rows = decoded_rows(geo, True)[None]
    _, pred = run(tmp_path / "agnostic", {"output0": rows}, card({"type": "yolo", "class_agnostic": True}))
    assert_boxes(pred, [A[0]], [0.81], [0])
    rows[0, 3, 4:] = [1.0, 0.8, 0.6]  # LOW, far from the others, now scores 0.8 as car and 0.6 as person
    _, pred = run(tmp_path / "multi", {"output0": rows}, card({"type": "yolo", "multi_label": True}))
    assert_boxes(pred, [A[0], LOW[0], B[0], LOW[0]], [0.81, 0.8, 0.70, 0.6], [0, 0, 1, 1])
    _, pred = run(tmp_path / "single", {"output0": rows}, card({"type": "yolo"}))  # a row's best class only
    assert_boxes(pred, [A[0], LOW[0], B[0]], [0.81, 0.8, 0.70], [0, 0, 1])


def test_yolo_normalized_xyxy_stretch(tmp_path):
    spec = card({"type": "yolo", "box_format": "xyxy", "normalized": True}, resize="stretch")
    rows = np.zeros((1, 3, 7), np.float32)
    rows[0, 0] = [0.25, 0.2, 0.75, 0.7, 1.0, 0.9, 0.0]  # stretch: normalized input = normalized frame
    _, pred = run(tmp_path, {"output0": rows}, spec)
    assert_boxes(pred, [(50, 20, 150, 70)], [0.9], [0])


@pytest.mark.parametrize("placement", ["center", "top_left"])
def test_yolox_grid_concatenated(tmp_path, placement):
    spec = card({"type": "yolox", "strides": list(STRIDES)}, letterbox=placement)
    rows = np.concatenate(grid_rows(geometry(placement)))[None]
    assert rows.shape == (1, 64 + 16 + 4, 7)
    _, pred = run(tmp_path, {"output": rows}, spec)
    assert_boxes(pred, [A[0], B[0]], [0.81, 0.70], [0, 1])


def test_yolox_one_tensor_per_stride(tmp_path):
    names = [f"p{s}" for s in STRIDES]
    outputs = {}
    for name, s, rows in zip(names, STRIDES, grid_rows(geometry("center"))):
        g = SIZE // s
        outputs[name] = rows.reshape(g, g, -1).transpose(2, 0, 1)[None]  # [1, 4+1+C, H, W], as a conv head
    _, pred = run(tmp_path, outputs, card({"type": "yolox", "outputs": names}))
    assert_boxes(pred, [A[0], B[0]], [0.81, 0.70], [0, 1])


def test_yolox_separate_box_obj_cls_logits_sqrt_score(tmp_path):
    outputs, boxes, objs, clss = {}, [], [], []
    for s, rows in zip(STRIDES, grid_rows(geometry("center"), sigmoid=True)):
        g = SIZE // s
        chw = rows.reshape(g, g, -1).transpose(2, 0, 1)[None]
        outputs[f"box{s}"], outputs[f"obj{s}"] = chw[:, :4], chw[:, 4:5]
        outputs[f"cls{s}"] = chw[:, 5:].transpose(0, 2, 3, 1).reshape(1, g * g, -1)  # [1, H*W, C] works too
        boxes.append(f"box{s}"), objs.append(f"obj{s}"), clss.append(f"cls{s}")
    spec = card({"type": "yolox", "box_outputs": boxes, "obj_outputs": objs, "cls_outputs": clss,
                 "sigmoid": True, "score": "sqrt"})
    _, pred = run(tmp_path, outputs, spec)
    assert_boxes(pred, [A[0], B[0]], [0.9, math.sqrt(0.7)], [0, 1])


def test_grayscale_nhwc_uint8_raw_pixels_top_left(tmp_path):
    geo = geometry("top_left")
    spec = card({"type": "yolo", "transposed": True, "objectness": False}, color="GRAY", layout="NHWC",
                dtype="uint8", letterbox="top_left", pad_value=7)
    spec["input"].pop("scale")
    image = frame()
    runner, pred = run(tmp_path, {"output0": decoded_rows(geo, False).T[None]}, spec, image=image,
                       input_shape=(1, SIZE, SIZE, 1), input_dtype="uint8")
    assert_boxes(pred, [A[0], B[0]], [0.81, 0.70], [0, 1])
    tensor, got_geo = runner.preprocess(image)
    want = np.full((SIZE, SIZE), 7, np.uint8)
    want[:32] = cv2.cvtColor(cv2.resize(image, (SIZE, 32), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2GRAY)
    assert tensor.dtype == np.uint8 and tensor.shape == (1, SIZE, SIZE, 1) and got_geo == geo
    assert np.array_equal(tensor[0, :, :, 0], want)


def test_letterbox_center_tensor(tmp_path):
    spec = card({"type": "yolo"}, pad_value=0, scale=1.0)
    runner, _ = run(tmp_path, {"output0": decoded_rows(geometry("center"), True)[None]}, spec)
    tensor, geo = runner.preprocess(np.full((FRAME_H, FRAME_W, 3), 200, np.uint8))
    assert geo == Geometry(0.32, 0.32, 0.0, 16.0)
    assert (tensor[0, :, :16] == 0).all() and (tensor[0, :, 48:] == 0).all() and (tensor[0, :, 16:48] == 200).all()


def test_nan_output_is_refused_at_run_time(tmp_path):
    spec = card({"type": "yolox", "strides": list(STRIDES)}, pad_value=0)
    rows = np.concatenate(grid_rows(geometry("center")))[None]
    model = make_constant_model(tmp_path / "nan.onnx", {"output": rows}, input_shape=(1, 3, SIZE, SIZE), card=spec,
                                fault="nan")
    runner = load_runner(model)  # the zero warm-up is finite
    with pytest.raises(NonFiniteOutput, match="output has 588 NaN"):
        runner.predict(frame())
    assert runner.predict(np.zeros((FRAME_H, FRAME_W, 3), np.uint8)).boxes.shape[1] == 4  # it still runs


BAD_CARDS = [
    ("strides", {"type": "yolox", "strides": [8, 16]}, {"output": np.zeros((1, 84, 7))}, {},
     r"strides 8, 16 give 8x8 \+ 4x4 = 80 rows of 7 values .* expected \[1, 80, 7\]"),
    ("labels", {"type": "yolo"}, {"output0": np.zeros((1, 10, 8))}, {},
     r"output output0 has shape \[1, 10, 8\]; a yolo card with 2 labels expects \[1, N, 7\]"),
    ("transposed", {"type": "yolo", "transposed": True, "objectness": False}, {"output0": np.zeros((1, 10, 6))},
     {}, r"expects \[1, 6, N\]"),
    ("per_stride", {"type": "yolox", "outputs": ["a", "b", "c"]},
     {"a": np.zeros((1, 7, 8, 8)), "b": np.zeros((1, 7, 4, 4)), "c": np.zeros((1, 7, 3, 3))}, {},
     r"output c has shape \[1, 7, 3, 3\]; stride 32 expects \[1, 7, 2, 2\]"),
    ("missing", {"type": "yolox", "outputs": ["a", "b", "zz"]},
     {"a": np.zeros((1, 7, 8, 8)), "b": np.zeros((1, 7, 4, 4)), "c": np.zeros((1, 7, 2, 2))}, {},
     "has no output zz"),
    ("gray_on_rgb", {"type": "yolo"}, {"output0": np.zeros((1, 10, 7))}, {"color": "GRAY"},
     r"has 3 channel\(s\) .* the card says color GRAY with 1 channel"),
    ("uint8_on_float", {"type": "yolo"}, {"output0": np.zeros((1, 10, 7))}, {"dtype": "uint8", "scale": 1.0},
     r"is tensor\(float\), the card says dtype uint8"),
]


@pytest.mark.parametrize("what,output,outputs,input_spec,message", BAD_CARDS, ids=[b[0] for b in BAD_CARDS])
def test_cards_that_do_not_fit_the_graph_fail_at_load(tmp_path, what, output, outputs, input_spec, message):
    spec = card(output, **input_spec)
    model = make_constant_model(tmp_path / "m.onnx", outputs, input_shape=(1, 3, SIZE, SIZE))
    (tmp_path / "m.onnx.card.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError, match=message):
        load_runner(model)


def test_rgb_card_on_a_grayscale_model_fails_at_load(tmp_path):
    model = make_constant_model(tmp_path / "m.onnx", {"output0": np.zeros((1, 10, 7))}, input_shape=(1, 1, SIZE, SIZE))
    (tmp_path / "m.onnx.card.json").write_text(json.dumps(card({"type": "yolo"})))
    with pytest.raises(ModelError, match=r"has 1 channel\(s\) .* the card says color RGB with 3 channel\(s\)"):
        load_runner(model)


@pytest.mark.parametrize("output,input_spec,message", [
    ({"type": "yolox", "strides": [8, 16, 24]}, {}, "not a multiple of stride 24"),
    ({"type": "yolox", "outputs": ["a", "b"]}, {}, "names 2 tensors for 3 strides"),
    ({"type": "yolox", "output": "x", "outputs": ["a", "b", "c"]}, {}, "give one of output, outputs"),
    ({"type": "yolox", "box_outputs": ["a", "b", "c"], "cls_outputs": ["d", "e", "f"]}, {},
     r"obj_outputs names 0 tensors, expected 3"),
    ({"type": "yolo", "objectness": False, "score": "sqrt"}, {}, "needs objectness"),
    ({"type": "yolo"}, {"color": "GRAY", "mean": [1, 2, 3]}, "one value for a GRAY"),
    ({"type": "yolo"}, {"dtype": "uint8", "scale": 0.5}, "leave out scale"),
])
def test_inconsistent_cards_are_refused(tmp_path, output, input_spec, message):
    with pytest.raises(ProtocolError, match=message):
        card_from_dict(card(output, **input_spec))


def test_yolox_single_stride_with_per_stride_outputs(tmp_path):
    """One stride named in ``outputs`` is a per-stride card, not the concatenated layout (it was refused at load)."""
    g = SIZE // 16
    rows = grid_rows(geometry("center"))[STRIDES.index(16)]  # holds only box A (STRIDE_OF)
    outputs = {"p16": rows.reshape(g, g, -1).transpose(2, 0, 1)[None]}  # [1, 4+1+C, H, W]
    _, pred = run(tmp_path, outputs, card({"type": "yolox", "strides": [16], "outputs": ["p16"]}))
    assert_boxes(pred, [A[0]], [0.81], [0])


def test_boxes_wholly_inside_the_letterbox_padding_are_dropped(tmp_path):
    geo = geometry("top_left")  # the frame fills input rows 0-31; rows 32-63 are padding
    rows = decoded_rows(geo, True)
    rows[5] = [32, 50, 20, 8, 1.0, 0.95, 0.0]  # confident, but below the frame: no area once clipped
    _, pred = run(tmp_path, {"output0": rows[None]}, card({"type": "yolo"}, letterbox="top_left"))
    assert_boxes(pred, [A[0], B[0]], [0.81, 0.70], [0, 1])
