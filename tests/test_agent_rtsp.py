"""The agent on a real RTSP camera: GStreamer's RTSP server, started by the test (tests/rtsp_server.py).

The server numbers every frame with its position in the live stream (eight
binary bands), so the test can tell a fresh frame from one that waited in a
buffer. It runs with the system python3 (python3-gi, gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-good); without them the tests skip, unless
EDGELOOP_REQUIRE_RTSP is set (CI), where they fail.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.config import CameraConfig
from agent.metrics import Counters
from agent.sources import CameraSource, FrameHub
from agent_helpers import base_config, make_classifier, running, write_config
from edgeloop.broker import free_port
from mqtt_util import wait_until

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"
FPS = 25
PROBE = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
         "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
         "missing = [e for e in ('appsrc', 'videoconvert', 'jpegenc', 'rtpjpegpay') "
         "if Gst.ElementFactory.find(e) is None]; print(' '.join(missing))")


def _missing() -> str | None:
    """Why the RTSP server cannot run here, or None."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found"
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", PROBE], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run {SYSTEM_PYTHON}: {e}"
    if out.returncode != 0:
        return ("GStreamer's RTSP server is not usable from the system python3 (apt-get install python3-gi "
                f"gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good): {out.stderr.strip()[-300:]}")
    if out.stdout.strip():
        return f"GStreamer elements missing: {out.stdout.strip()} (apt-get install gstreamer1.0-plugins-good)"
    return None


@pytest.fixture(scope="module")
def rtsp_tools():
    why = _missing()
    if why:
        if os.environ.get("EDGELOOP_REQUIRE_RTSP"):
            pytest.fail(f"EDGELOOP_REQUIRE_RTSP is set but {why}")
        pytest.skip(why)


class RtspServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}/cam"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RtspServer":
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(HERE / "rtsp_server.py"), "--port", str(self.port),
                                      "--fps", str(FPS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"RTSP server did not start: {line} {self.proc.stderr.read()[-1000:]}")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def rtsp(rtsp_tools):
    server = RtspServer(free_port()).start()
    yield server
    server.kill()


def frame_number(image: np.ndarray) -> int:
    """The number the server drew: eight bands, white = 1, most significant on the left."""
    gray = image.mean(axis=2) if image.ndim == 3 else image
    width = gray.shape[1] // 8
    bits = [gray[:, i * width + width // 4:(i + 1) * width - width // 4].mean() > 128 for i in range(8)]
    return int("".join("1" if b else "0" for b in bits), 2)


def _camera(url: str, **kw) -> CameraConfig:
    return CameraConfig(id="cam1", source=url, open_timeout_s=5, read_timeout_s=2, reconnect_min_s=0.2,
                        reconnect_max_s=1.0, **kw)


def test_max_fps_on_a_live_stream_delivers_fresh_frames_not_a_backlog(rtsp):
    counters = Counters()
    hub = FrameHub(["cam1"], counters)
    source = CameraSource(_camera(rtsp.url, max_fps=2), hub, counters, random.Random(0))
    source.start()
    numbers = []
    try:
        while len(numbers) < 8:
            frame = hub.take(10)
            assert frame is not None, f"no frame: {source.state} {source.last_error}"
            numbers.append(frame_number(frame.image))
            hub.done()
    finally:
        source.stop()
        source.join(10)
    steps = [(b - a) % 256 for a, b in zip(numbers, numbers[1:])]
    # 25 fps read at 2 fps: each delivered frame is ~12 stream frames after the one before. A reader that
    # slept between reads would get the next frame in the buffer, 1 later, falling further behind each time.
    assert sorted(steps)[len(steps) // 2] >= 8, f"stale frames: stream positions {numbers}"
    assert counters.get("camera_error") == 0


def test_agent_reconnects_when_the_rtsp_server_goes_away_and_comes_back(rtsp, broker, tmp_path):
    model = make_classifier(tmp_path / "v1.onnx", version=1)
    cam = {"id": "cam1", "source": rtsp.url, "open_timeout_s": 2.0, "read_timeout_s": 2.0,
           "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    path = write_config(tmp_path / "a.toml", base_config(tmp_path, broker, model, cameras=[cam]))
    with running(path) as agent:
        source = agent.sources[0]
        assert wait_until(lambda: agent.frames >= 20, 30), (source.state, source.last_error)
        assert source.state == "running"
        rtsp.kill()
        assert wait_until(lambda: source.state == "reconnecting", 20), source.state
        assert "rtsp" in source.last_error and agent.counters.get("camera_error") >= 1
        time.sleep(2.0)  # a few failed reopens while the server is down
        down_frames = agent.frames
        rtsp.start()  # the same URL comes back
        assert wait_until(lambda: source.state == "running" and agent.frames >= down_frames + 20, 30), \
            (source.state, source.last_error)
