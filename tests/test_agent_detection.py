"""Detection end to end: an SSD-style model, band and flicker strategies, samples with boxes over MQTT."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent_helpers import Collector, base_config, make_detector, running, write_config
from mqtt_util import wait_until

ROOT = Path(__file__).resolve().parents[1]
ULTRAFACE = ROOT.parent / "shared" / "models" / "ultraface" / "version-RFB-320.onnx"


def test_detection_samples_carry_boxes_and_reasons(broker, tmp_path):
    model = make_detector(tmp_path / "det.onnx")
    cfg = base_config(tmp_path, broker, model,
                      model={"name": "blobs"},
                      cameras=[{"id": "cam1", "source": "synthetic",
                                "synthetic": {"seed": 3, "width": 128, "height": 96, "frames": 80}}],
                      sampling={"strategies": [{"name": "flicker", "min_score": 0.5},
                                               {"name": "threshold_band", "low": 0.35, "high": 0.65}]})
    collector = Collector(broker.host, broker.port)
    try:
        with running(write_config(tmp_path / "a.toml", cfg)) as agent:
            assert wait_until(lambda: agent.sources_done() and agent.outbox.stats().pending == 0, 30)
            stats = agent.outbox.stats()
        assert stats.picked == stats.delivered > 0
        assert wait_until(lambda: len(collector.ids()) == stats.picked, 10)
        samples = collector.received
        assert {s.strategy for s in samples} == {"threshold_band", "flicker"}
        for s in samples:
            assert s.task == "detection" and s.labels == ("blob",) and s.boxes and s.reason
            assert all(0 <= b.x1 <= b.x2 <= 1 and 0 <= b.y1 <= b.y2 <= 1 and b.label == 0 for b in s.boxes)
            assert (s.width, s.height) == (128, 96)
        band = [s for s in samples if s.strategy == "threshold_band"]
        assert all(any(0.35 <= b.score <= 0.65 for b in s.boxes) for s in band)  # candidates below 0.5 travel too
    finally:
        collector.close()


@pytest.mark.shared
@pytest.mark.slow
def test_ultraface_on_the_highway_video(broker, tmp_path, shared_data):
    if not ULTRAFACE.exists():
        pytest.skip("../shared/models/ultraface is absent")
    model = tmp_path / "version-RFB-320.onnx"
    shutil.copy(ULTRAFACE, model)
    card = ROOT / "agent" / "cards" / "ultraface-rfb-320.card.toml"
    cfg = base_config(tmp_path, broker, model, model={"name": "ultraface", "card": str(card)},
                      cameras=[{"id": "road", "source": str(shared_data / "video" / "highway_video1.avi"),
                                "on_eof": "stop", "max_fps": 0}],
                      sampling={"strategies": [{"name": "threshold_band", "low": 0.3, "high": 0.7},
                                               {"name": "random", "rate": 0.05}], "seed": 3})
    collector = Collector(broker.host, broker.port)
    try:
        with running(write_config(tmp_path / "a.toml", cfg)) as agent:
            assert wait_until(lambda: agent.sources_done() and agent.outbox.stats().pending == 0, 60)
            assert agent.frames == 500 and agent.inference_errors == 0
            stats = agent.outbox.stats()
        assert stats.picked == stats.delivered > 0
        assert wait_until(lambda: len(collector.ids()) == stats.picked, 10)
        assert all(s.model_name == "ultraface" and (s.width, s.height) == (320, 240) for s in collector.received)
    finally:
        collector.close()
