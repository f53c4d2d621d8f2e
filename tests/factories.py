"""Valid example messages for tests; each test changes what it needs."""

from __future__ import annotations

import time
from dataclasses import replace

import cv2
import numpy as np

from protocol import Announcement, Box, Command, ConfigBundle, Receipt, Sample, Status, Telemetry, HIST_BINS


def jpeg(width: int = 64, height: int = 48, seed: int = 0, quality: int = 85) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def sample(**changes) -> Sample:
    base = Sample(
        agent_id="cam-agent-1", camera_id="gate", frame_id="cam-agent-1.gate.000001",
        captured_at=time.time(), model_name="shapes", model_version=3, task="classification",
        labels=("circle", "square", "triangle"), scores=(0.4, 0.35, 0.25), boxes=(),
        uncertainty=0.6, strategy="margin", reason="margin 0.05 < 0.2", width=64, height=48, jpeg=jpeg(),
    )
    return replace(base, **changes)


def detection_sample(**changes) -> Sample:
    base = dict(task="detection", labels=("car", "person"), scores=(),
                boxes=(Box(0.1, 0.2, 0.3, 0.4, 0.55, 0), Box(0.5, 0.5, 0.9, 0.95, 0.48, 1)),
                strategy="threshold_band", reason="2 boxes in [0.4, 0.6]")
    return sample(**{**base, **changes})


def receipt(**changes) -> Receipt:
    return replace(Receipt(stored=("cam-agent-1.gate.000001",), rejected=(("cam-agent-1.gate.000002", "bad_jpeg"),),
                           at=time.time()), **changes)


def status(**changes) -> Status:
    return replace(Status(agent_id="cam-agent-1", state="online", at=time.time(), software_version="0.1.0",
                          model_name="shapes", model_version=3, model_state="ok", cameras=("gate",),
                          cohorts=("canary",), detail="", tags={"site": "north"}, answered=("cmd-1",),
                          config_group="canary", config_version=2), **changes)


def telemetry(**changes) -> Telemetry:
    return replace(Telemetry(agent_id="cam-agent-1", at=time.time(), period_s=10.0, model_version=3, fps=24.5,
                             latency_p50_ms=4.2, latency_p99_ms=9.8, frames=1000, sampled=12, inference_errors=0,
                             outbox_depth=3, outbox_bytes=60000, drops={"rate_limit": 5, "near_duplicate": 7},
                             conf_hist={"circle": (0,) * (HIST_BINS - 1) + (10,)}, camera_fps={"gate": 24.5}),
                   **changes)


def command(**changes) -> Command:
    return replace(Command(command_id="cmd-1", action="rollback", issued_at=time.time(), args={"to": 2}), **changes)


def announcement(**changes) -> Announcement:
    return replace(Announcement(manifest=b'{"name":"shapes"}', signature=bytes(64),
                                url="http://127.0.0.1:8080/models/shapes/4"), **changes)


def config_bundle(**changes) -> ConfigBundle:
    return replace(ConfigBundle(bundle=b'{"group":"canary"}', signature=bytes(64)), **changes)


ALL = {"sample": sample, "detection_sample": detection_sample, "receipt": receipt, "status": status,
       "telemetry": telemetry, "command": command, "announcement": announcement,
       "config": config_bundle}
