"""YOLOX-Nano (../shared/models/yolox-nano) through its shipped card: against an independent decode, and in the agent.

The reference below follows ../shared/models/yolox-nano/README.md literally, with its own onnxruntime
session, its own letterbox, grid decode and NMS: nothing from agent/ is used for it. Skipped without
../shared.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from agent.model import load_runner

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "yolox-nano" / "yolox_nano.onnx"
VIDEO = SHARED / "data" / "video" / "highway_video1.avi"
CARD = ROOT / "agent" / "cards" / "yolox-nano.card.toml"
FRAMES = (0, 60, 120, 180)
CAR = 2  # COCO order: person, bicycle, car, ...

pytestmark = [pytest.mark.shared]


def frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(VIDEO))
    out, i = [], 0
    while len(out) < len(FRAMES):
        ok, img = cap.read()
        assert ok, f"{VIDEO} ended before frame {FRAMES[len(out)]}"
        if i in FRAMES:
            out.append(img)
        i += 1
    cap.release()
    return out


def reference(session: ort.InferenceSession, img: np.ndarray) -> list[tuple[int, float, np.ndarray]]:
    """(class, score, x1 y1 x2 y2 in frame pixels) with score >= 0.3, as the README says."""
    h, w = img.shape[:2]
    r = min(416 / h, 416 / w)
    canvas = np.full((416, 416, 3), 114, np.uint8)  # top-left placement, rest 114
    canvas[:round(h * r), :round(w * r)] = cv2.resize(img, (round(w * r), round(h * r)))
    x = canvas.astype(np.float32).transpose(2, 0, 1)[None]  # BGR, raw 0-255
    out = session.run(["output"], {"images": x})[0][0]
    assert out.shape == (3549, 85)
    cells = []
    for stride in (8, 16, 32):
        n = 416 // stride
        for gy in range(n):
            for gx in range(n):
                cells.append((gx, gy, stride))
    cells = np.array(cells, np.float32)
    cx = (cells[:, 0] + out[:, 0]) * cells[:, 2]
    cy = (cells[:, 1] + out[:, 1]) * cells[:, 2]
    bw, bh = np.exp(out[:, 2]) * cells[:, 2], np.exp(out[:, 3]) * cells[:, 2]
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1) / r
    found = []
    for c in range(80):
        score = out[:, 4] * out[:, 5 + c]
        idx = [i for i in np.argsort(-score) if score[i] >= 0.3]
        while idx:
            best, idx = idx[0], idx[1:]
            found.append((c, float(score[best]), boxes[best]))
            idx = [i for i in idx if iou(boxes[best], boxes[i]) <= 0.45]
    return sorted(found, key=lambda f: -f[1])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def test_yolox_nano_finds_the_cars_as_its_readme_decodes_them(tmp_path):
    if not MODEL.exists() or not VIDEO.exists():
        pytest.skip("../shared/models/yolox-nano or ../shared/data/video is absent")
    model = tmp_path / "yolox_nano.onnx"
    shutil.copy(MODEL, model)
    shutil.copy(CARD, tmp_path / "yolox_nano.onnx.card.toml")  # a sidecar, as agents use it
    runner = load_runner(model)
    assert (runner.card.name, runner.input_shape, runner.provider) == ("yolox-nano", [1, 3, 416, 416], "cpu")
    assert runner.card.labels[CAR] == "car" and len(runner.card.labels) == 80
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    for img in frames():
        pred = runner.predict(img)
        want = reference(session, img)
        got = list(zip(pred.box_labels.tolist(), pred.box_scores.tolist(), pred.pixel_boxes))
        # the runner clips boxes to the frame; the README's decode does not
        clip = np.array([img.shape[1], img.shape[0]] * 2, np.float32)
        assert len(got) == len(want) > 0
        for (gl, gs, gb), (wl, ws, wb) in zip(got, want):
            assert gl == wl and abs(gs - ws) < 1e-4
            assert np.allclose(gb, np.clip(wb, 0, clip), atol=0.05), (gb, wb)
        cars = [s for lab, s, _ in got if lab == CAR]
        assert len(cars) >= 3 and max(cars) >= 0.7  # the README: cars with scores up to about 0.85


@pytest.mark.slow
def test_agent_runs_yolox_nano_on_the_highway_video(broker, tmp_path):
    """The whole agent (video source, sampling, outbox, MQTT) with the model and its sidecar card."""
    if not MODEL.exists() or not VIDEO.exists():
        pytest.skip("../shared/models/yolox-nano or ../shared/data/video is absent")
    from agent_helpers import Collector, base_config, running, write_config
    from mqtt_util import wait_until

    model = tmp_path / "yolox_nano.onnx"
    shutil.copy(MODEL, model)
    shutil.copy(CARD, tmp_path / "yolox_nano.onnx.card.toml")
    cfg = base_config(tmp_path, broker, model, model={"name": "yolox-nano", "intra_op_threads": 2},
                      cameras=[{"id": "road", "source": str(VIDEO), "on_eof": "stop"}],
                      sampling={"strategies": [{"name": "threshold_band", "low": 0.3, "high": 0.5}], "seed": 3,
                                "dedup_hamming": 6})
    collector = Collector(broker.host, broker.port)
    try:
        with running(write_config(tmp_path / "a.toml", cfg)) as agent:
            assert wait_until(lambda: agent.sources_done() and agent.outbox.stats().pending == 0, 240)
            assert agent.frames == 500 and agent.inference_errors == 0
            stats = agent.outbox.stats()
            assert wait_until(lambda: collector.last_status() is not None, 10)
            assert collector.last_status().provider == "cpu"
        assert stats.picked == stats.delivered > 0
        assert wait_until(lambda: len(collector.ids()) == stats.picked, 10)
        for s in collector.received:
            assert s.model_name == "yolox-nano" and len(s.labels) == 80 and (s.width, s.height) == (320, 240)
            assert any(0.3 <= b.score <= 0.5 for b in s.boxes)  # what the band strategy picked it for
        assert any(s.labels[b.label] == "car" and b.score >= 0.5 for s in collector.received for b in s.boxes)
    finally:
        collector.close()
