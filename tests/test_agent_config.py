"""Config validation, --check-config, --help, import hygiene, sources without a broker."""

from __future__ import annotations

import subprocess
import typing
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest

from agent.config import AgentConfig, ConfigError, load_config
from agent.metrics import Counters
from agent.sources import CameraSource, FrameHub, detect_kind
from agent.config import CameraConfig
from agent.synthetic import SyntheticCamera
from agent_helpers import make_classifier, write_config

ROOT = Path(__file__).resolve().parents[1]


class _Broker:
    host, port = "127.0.0.1", 1


def _config(tmp_path: Path, **top) -> dict:
    model = make_classifier(tmp_path / "m.onnx")
    return {"agent_id": "agent-1", "data_dir": "data",
            "model": {"name": "shapes", "path": str(model.name)},
            "cameras": [{"id": "cam1", "source": "synthetic"}], **top}


def _edgeloop(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeloop", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_unknown_and_bad_keys_are_named(tmp_path):
    cfg = _config(tmp_path, sampling={"strategies": [{"name": "margin", "treshold": 0.1}], "per_minute": -1},
                  mqtt={"prot": 1883})
    path = write_config(tmp_path / "a.toml", cfg)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = "\n".join(err.value.problems)
    assert "sampling.strategies.0.margin.treshold: Extra inputs are not permitted" in problems
    assert "sampling.per_minute: Input should be greater than or equal to 0" in problems
    assert "mqtt.prot: Extra inputs are not permitted" in problems


def test_relative_paths_secrets_and_duplicates(tmp_path, monkeypatch):
    path = write_config(tmp_path / "a.toml", _config(tmp_path, mqtt={"username": "edge"}))
    monkeypatch.setenv("EDGELOOP_MQTT_PASSWORD", "changeme")
    with pytest.raises(ConfigError, match="placeholder"):
        load_config(path)
    monkeypatch.setenv("EDGELOOP_MQTT_PASSWORD", "s3cret-value")
    cfg = load_config(path)
    assert cfg.model.path == tmp_path / "m.onnx" and cfg.data_dir == tmp_path / "data"
    dup = _config(tmp_path, cameras=[{"id": "a", "source": "synthetic"}, {"id": "a", "source": "0"}])
    with pytest.raises(ConfigError, match="duplicate id a"):
        load_config(write_config(tmp_path / "b.toml", dup))
    with pytest.raises(ConfigError, match="trusted_keys.0"):
        load_config(write_config(tmp_path / "c.toml", _config(tmp_path, updates={"trusted_keys": ["bm90IGEga2V5"]})))


def test_check_config_cli(tmp_path):
    good = write_config(tmp_path / "good.toml", _config(tmp_path))
    r = _edgeloop("agent", "--check-config", str(good))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "model shapes v1" in r.stdout
    bad = write_config(tmp_path / "bad.toml", _config(tmp_path, outbox={"max_byte": 10}))
    r = _edgeloop("agent", "--check-config", str(bad))
    assert r.returncode == 1 and "outbox.max_byte: Extra inputs are not permitted" in r.stderr
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    cfg = _config(tmp_path)
    cfg["model"]["path"] = "junk.onnx"
    r = _edgeloop("agent", "--check-config", str(write_config(tmp_path / "junk.toml", cfg)))
    assert r.returncode == 1 and "model.path: junk.onnx is not a loadable ONNX model" in r.stderr


def test_help_documents_every_option():
    r = _edgeloop("agent", "--help")
    assert r.returncode == 0
    for option in ("--config", "--check-config", "--exit-when-done", "--drain-timeout", "--seed"):
        assert option in r.stdout
    readme = (ROOT / "agent" / "README.md").read_text()
    for option in ("--config", "--check-config", "--exit-when-done", "--drain-timeout", "--seed"):
        assert f"`{option}" in readme


def _models_in(annotation):
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def _keys(model, prefix=""):
    """Every config key, including camera, synthetic and strategy parameters."""
    for name, field in model.model_fields.items():
        yield prefix + name
        for sub in _models_in(field.annotation):
            yield from _keys(sub, prefix + name + ".")


def test_readme_documents_every_config_key():
    readme = (ROOT / "agent" / "README.md").read_text()
    keys = set(_keys(AgentConfig))
    assert "cameras.synthetic.drift_per_frame" in keys and "sampling.strategies.min_count" in keys
    missing = sorted(k for k in keys if not any(f"`{form.format(k.split('.')[-1])}`" in readme
                                                for form in ("{}", "[{}]", "[[{}]]")))
    assert not missing, f"agent/README.md does not document {missing}"


def test_agent_imports_no_torch_or_web_stack():
    code = ("import sys, agent.cli, agent.pipeline, agent.model, agent.sampling, agent.outbox, agent.uplink, "
            "agent.updater, agent.sources, agent.synthetic, agent.config, agent.metrics, agent.onnxcheck\n"
            "bad = sorted(m for m in ('torch', 'torchvision', 'fastapi', 'onnx', 'starlette', 'uvicorn') "
            "if m in sys.modules)\nprint(bad)\nassert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_detect_kind(tmp_path):
    assert [detect_kind(s) for s in ("synthetic", "0", "usb:2", "rtsp://cam/1", "https://cam/mjpg", str(tmp_path),
                                     "clip.mp4")] == ["synthetic", "usb", "usb", "rtsp", "http", "folder", "file"]


def _run_source(cfg: CameraConfig, counters: Counters, until, timeout: float = 10.0) -> list:
    hub = FrameHub([cfg.id], counters)
    src = CameraSource(cfg, hub, counters, __import__("random").Random(0))
    frames = []
    src.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(src, frames):
        f = hub.take(0.1)
        if f is not None:
            frames.append(f)
    src.stop()
    src.join(5)
    return frames


def test_folder_source_skips_corrupt_and_truncated_files(tmp_path):
    cam = SyntheticCamera(seed=4)
    ok, good = cv2.imencode(".jpg", cam.frame(0).image)
    (tmp_path / "a_good.jpg").write_bytes(good.tobytes())
    (tmp_path / "b_truncated.jpg").write_bytes(good.tobytes()[: len(good) // 2])
    (tmp_path / "c_garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cv2.imwrite(str(tmp_path / "d_good.png"), cam.frame(7).image)
    counters = Counters()
    cfg = CameraConfig(id="f", source=str(tmp_path), on_eof="stop")
    frames = _run_source(cfg, counters, lambda s, fr: s.ended)
    assert [f.seq for f in frames] == [0, 1] and frames[1].image.shape == (240, 320, 3)
    assert counters.get("corrupt_frame") == 2


def test_video_file_that_disappears_is_reopened(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    cam = SyntheticCamera(seed=5, width=64, height=48)
    for i in range(10):
        writer.write(cam.frame(i).image)
    writer.release()
    counters = Counters()
    cfg = CameraConfig(id="v", source=str(video), on_eof="loop", reconnect_min_s=0.05, reconnect_max_s=0.2)
    hidden = tmp_path / "hidden.avi"
    seen_reconnecting = threading.Event()

    def until(src, frames):
        if len(frames) == 15 and video.exists():
            video.rename(hidden)  # the camera goes away mid-stream
        if src.state == "reconnecting" and "clip.avi" in src.last_error:
            seen_reconnecting.set()
            if hidden.exists():
                hidden.rename(video)  # and comes back
        return seen_reconnecting.is_set() and len(frames) >= 40

    frames = _run_source(cfg, counters, until)
    assert seen_reconnecting.is_set() and len(frames) >= 40
    assert counters.get("camera_error") >= 1


def test_http_stream_keeps_latest_frame_and_reconnects(tmp_path):
    from agent_helpers import FileServer

    clip = tmp_path / "www" / "clip.avi"
    clip.parent.mkdir()
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    cam = SyntheticCamera(seed=6, width=64, height=48)
    for i in range(30):
        writer.write(cam.frame(i).image)
    writer.release()
    server = FileServer(clip.parent)
    counters = Counters()
    cfg = CameraConfig(id="web", source=f"{server.url}/clip.avi", open_timeout_s=3, read_timeout_s=3,
                       reconnect_min_s=0.05, reconnect_max_s=0.2)
    states = set()

    def until(src, frames):
        states.add(src.state)
        time.sleep(0.01)  # a slow consumer: the grabber must replace, not queue
        return len(frames) >= 15 and "reconnecting" in states

    try:
        frames = _run_source(cfg, counters, until, timeout=20)
    finally:
        server.close()
    assert len(frames) >= 15 and "reconnecting" in states  # end of the stream: reopened, not stopped
    assert counters.get("stale_frame") > 0 and counters.get("camera_error") >= 1
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[-1] > len(seqs)  # skipped stale ones


def test_readme_example_config_is_valid(tmp_path):
    import tomllib

    from agent.config import parse_config

    readme = (ROOT / "agent" / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = parse_config(tomllib.loads(example), tmp_path)
    assert [c.id for c in cfg.cameras] == ["gate", "dock"] and cfg.mqtt.tls
    assert [s.name for s in cfg.sampling.strategies] == ["margin", "random"]
