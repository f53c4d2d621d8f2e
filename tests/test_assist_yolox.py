"""Third-party teachers from ../shared through their cards: YOLOX-Nano finds the highway's cars as
"vehicle" pre-labels over real HTTP, and UltraFace loads from agent/cards. Skipped without ../shared."""

from __future__ import annotations

from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from conftest import ROOT, SHARED
from factories import detection_sample
from test_assist import H, wait_for
from test_ui_review import running_server
from trainer.assist import AssistConfig
from trainer.assist.teacher import Teacher
from trainer.store import Store, incoming

pytestmark = [pytest.mark.shared, pytest.mark.timeout(180)]
YOLOX = SHARED / "models" / "yolox-nano" / "yolox_nano.onnx"
YOLOX_CARD = ROOT / "agent" / "cards" / "yolox-nano.card.toml"
ULTRAFACE = SHARED / "models" / "ultraface" / "version-RFB-320.onnx"
VIDEO = SHARED / "data" / "video" / "highway_video1.avi"
VEHICLES = {"car": "vehicle", "truck": "vehicle", "bus": "vehicle"}


def highway_frames(indices: tuple[int, ...]) -> list[np.ndarray]:
    if not (VIDEO.exists() and YOLOX.exists()):
        pytest.skip("../shared video or YOLOX-Nano is absent")
    cap = cv2.VideoCapture(str(VIDEO))
    frames, i = [], 0
    try:
        while len(frames) < len(indices):
            ok, img = cap.read()
            assert ok, f"{VIDEO} ended before frame {indices[len(frames)]}"
            if i in indices:
                frames.append(img)
            i += 1
    finally:
        cap.release()
    return frames


def test_yolox_teacher_finds_vehicles_on_the_highway() -> None:
    frames = highway_frames((10, 60, 120))
    cfg = AssistConfig(model=YOLOX, card=YOLOX_CARD, label_map=VEHICLES, min_score=0.3)
    teacher = Teacher.load(cfg, "detection", ("vehicle",))
    assert teacher.mapping == VEHICLES  # COCO labels that are not project labels are dropped
    for img in frames:
        p = teacher.predict(img)
        assert p.boxes and {b["label"] for b in p.boxes} == {"vehicle"}
        assert p.score == max(b["score"] for b in p.boxes) and 0.5 < p.score <= 1.0
        for b in p.boxes:
            assert 0 <= b["x1"] < b["x2"] <= 1 and 0 <= b["y1"] < b["y2"] <= 1
            # a car on a 320x240 highway frame is small: no box covers most of the frame
            assert (b["x2"] - b["x1"]) * (b["y2"] - b["y1"]) < 0.5


def test_yolox_prelabels_accepted_over_http(tmp_path: Path) -> None:
    frames = highway_frames((30, 90))
    data = tmp_path / "data"
    with Store(data) as store:
        store.configure_project(task="detection", labels=("vehicle",))
        samples = []
        for i, img in enumerate(frames):
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            samples.append(detection_sample(frame_id=f"cam-agent-1.highway.{i:06d}", labels=("vehicle",), boxes=(),
                                            jpeg=buf.tobytes(), width=img.shape[1], height=img.shape[0]))
        store.ingest_samples([incoming(s) for s in samples])
    assist = {"model": str(YOLOX), "card": str(YOLOX_CARD), "label_map": VEHICLES, "poll_s": 0.1}
    with running_server(data, "detection", ("vehicle",), assist=assist) as (base, store), \
            httpx.Client(base_url=base, headers=H, timeout=20) as c:
        st = wait_for(lambda: (r := c.get("/api/assist").json())["counts"]["done"] == 2 and r, timeout=60)
        assert st["teacher"]["name"] == "yolox-nano" and st["teacher"]["provider"] == "cpu"
        items = c.get("/api/queue").json()["items"]
        for item in items:
            pre = item["prelabel"]
            assert pre["model_name"] == "yolox-nano" and pre["boxes"], pre
            r = c.post(f"/api/items/{item['id']}/accept-prelabel")
            assert r.status_code == 200, r.text
            got = r.json()["item"]
            assert got["status"] == "labeled" and len(got["boxes"]) == len(pre["boxes"])
            assert {b["label"] for b in got["boxes"]} == {"vehicle"}


def test_ultraface_teacher_loads_from_its_agent_card() -> None:
    if not ULTRAFACE.exists():
        pytest.skip("../shared UltraFace is absent")
    cfg = AssistConfig(model=ULTRAFACE, card=ROOT / "agent" / "cards" / "ultraface-rfb-320.card.toml", min_score=0.7)
    teacher = Teacher.load(cfg, "detection", ("face", "vehicle"))
    assert (teacher.name, teacher.task, teacher.mapping) == ("ultraface", "detection", {"face": "face"})
    face = np.full((240, 320, 3), 90, np.uint8)
    p = teacher.predict(face)  # a flat grey frame holds no face
    assert p.boxes == [] and p.score is None
