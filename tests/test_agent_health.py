"""The health window after a model install: the pure verdict, NaN surfacing, revert, block, restart.

Real onnxruntime models built here that load, warm up and fit their card but
fail on real frames (NaN outputs, or an onnxruntime error), a real broker, a
real HTTP server, and the real in-process agent on a synthetic camera.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.config import HealthConfig, parse_config
from agent.health import HealthCounts, HealthWindow, health_verdict
from agent.model import ModelRunner, NonFiniteOutput, nonfinite_outputs
from agent.modelstore import ModelStore
from agent.synthetic import SyntheticCamera
from agent.updater import ModelHolder, Updater
from agent_helpers import (Collector, announcement, base_config, make_classifier, make_faulty_classifier,
                           keys, running, site, write_config)
from mqtt_util import Recorder, publish, wait_until
from protocol import Sample, Telemetry, decode, encode
from protocol.topics import SAMPLES_FILTER, TELEMETRY_FILTER, announce_topic

CFG = HealthConfig(window_s=10, min_frames=20, max_error_rate=0.1, max_nonfinite_rate=0.0, max_confidence_drop=0.5)


# -- the pure verdict ------------------------------------------------------------------

@pytest.mark.parametrize("counts, state, words", [
    (HealthCounts(2, frames=5, elapsed_s=1), "pending", "5/20 frames"),
    (HealthCounts(2, frames=25, elapsed_s=3), "pending", "3/10 s"),
    (HealthCounts(2, frames=500, elapsed_s=2), "pending", "2/10 s"),
    (HealthCounts(2, frames=15, elapsed_s=60), "pending", "15/20 frames"),
    (HealthCounts(2, frames=25, elapsed_s=10, mean_confidence=0.8), "ok", "25 frames in 10 s: 0 errors"),
    # under the error rate over the window
    (HealthCounts(2, frames=100, errors=9, elapsed_s=11), "ok", "9 errors"),
    (HealthCounts(2, frames=100, errors=11, elapsed_s=11), "failed", "11 inference error(s) in 100 frame(s)"),
    # already over the limit for the smallest window: fails without waiting for min_frames or window_s
    (HealthCounts(2, frames=3, errors=3, elapsed_s=0.1), "failed", "3 inference error(s)"),
    (HealthCounts(2, frames=3, errors=2, elapsed_s=0.1), "pending", "3/20 frames"),
    # max_nonfinite_rate 0: one NaN frame fails at once
    (HealthCounts(2, frames=1, nonfinite=1, elapsed_s=0.0), "failed", "1 of 1 frame(s) gave NaN/inf"),
    # confidence collapse against the previous model, judged at the end of the window only
    (HealthCounts(2, frames=30, elapsed_s=10, mean_confidence=0.34, baseline_confidence=0.9), "failed",
     "mean confidence 0.34 against 0.90"),
    (HealthCounts(2, frames=30, elapsed_s=5, mean_confidence=0.34, baseline_confidence=0.9), "pending", ""),
    (HealthCounts(2, frames=30, elapsed_s=10, mean_confidence=0.5, baseline_confidence=0.9), "ok", ""),
    (HealthCounts(2, frames=30, elapsed_s=10, mean_confidence=0.34, baseline_confidence=None), "ok", ""),
])
def test_health_verdict(counts, state, words):
    got, reason = health_verdict(counts, CFG)
    assert got == state, reason
    assert words in reason


def test_verdict_limits_at_their_edges():
    off = CFG.model_copy(update={"max_confidence_drop": 1.0})
    collapsed = HealthCounts(2, frames=30, elapsed_s=10, mean_confidence=0.01, baseline_confidence=0.99)
    assert health_verdict(collapsed, off)[0] == "ok"  # 1.0 switches the confidence check off
    strict = CFG.model_copy(update={"max_error_rate": 0.0})
    assert health_verdict(HealthCounts(2, frames=1000, errors=1, elapsed_s=20), strict)[0] == "failed"
    lenient = CFG.model_copy(update={"max_nonfinite_rate": 0.5})
    assert health_verdict(HealthCounts(2, frames=20, nonfinite=10, elapsed_s=20), lenient)[0] == "ok"
    assert health_verdict(HealthCounts(2, frames=20, nonfinite=11, elapsed_s=20), lenient)[0] == "failed"


def test_health_window_counts_per_version_with_a_baseline():
    now = [100.0]
    w = HealthWindow(CFG, clock=lambda: now[0])
    assert w.counts() is None and w.verdict() is None
    for i in range(30):
        w.record(1, "ok", 0.9)
    w.begin(2, previous=1)
    w.record(1, "ok", 0.1)  # a frame inferred by v1 just before the swap is not v2's
    for _ in range(25):
        w.record(2, "ok", 0.3)
    w.record(2, "error")
    now[0] += 12
    c = w.counts()
    assert (c.version, c.frames, c.errors, c.nonfinite, c.elapsed_s) == (2, 26, 1, 0, 12)
    assert c.mean_confidence == pytest.approx(0.3) and c.baseline_confidence == pytest.approx(0.9, abs=0.03)
    assert w.verdict()[1] == "failed"  # 0.3 < 0.5 * ~0.87
    w.begin(3, previous=2)  # v2 ran 26 frames: enough for a baseline
    assert w.counts().baseline_confidence == pytest.approx(0.3)
    w.begin(4, previous=99)  # never seen: no baseline
    assert w.counts().baseline_confidence is None
    w.end()
    assert w.probation is None and w.counts() is None


# -- NaN surfaces instead of being clipped or dropped --------------------------------------

def test_model_runner_raises_on_nan_instead_of_decoding_it(tmp_path):
    frame = SyntheticCamera(3).frame(0).image
    nan = ModelRunner.load(make_faulty_classifier(tmp_path / "nan.onnx", "nan"), ["cpu"], intra=1)
    assert np.isfinite(nan.infer(np.zeros((24, 24, 3), np.uint8)).scores).all()  # the zero warm-up passes
    with pytest.raises(NonFiniteOutput, match="logits has 3 NaN and 0 inf of 3 values"):
        nan.infer(frame)
    err = ModelRunner.load(make_faulty_classifier(tmp_path / "err.onnx", "error"), ["cpu"], intra=1)
    with pytest.raises(Exception, match="out of data bounds"):
        err.infer(frame)
    good = ModelRunner.load(make_classifier(tmp_path / "good.onnx"), ["cpu"], intra=1)
    assert np.isfinite(good.infer(frame).scores).all()
    assert nonfinite_outputs([np.array([1.0, np.inf, -np.inf]), np.array([1, 2])], ["a", "b"]) == \
        "a has 0 NaN and 2 inf of 3 values"
    assert nonfinite_outputs([np.zeros(3, np.float16), np.arange(3)], ["a", "b"]) == ""


# -- the updater's reaction to a verdict, with real files and no MQTT ---------------------------


def _updater(tmp_path, pub, model, health=None):
    broker = type("B", (), {"host": "127.0.0.1", "port": 1})()
    raw = base_config(tmp_path, broker, model, updates={
        "enabled": True, "trusted_keys": [pub], "allow_http": True,
        "health": {"window_s": 0.0, "min_frames": 5}})
    cfg = parse_config(raw, tmp_path)
    holder = ModelHolder()
    window = HealthWindow(cfg.updates.health) if health else None
    up = Updater(cfg, ModelStore(cfg.data_dir / "models"), holder, lambda: None, health=window)
    up.load_initial()
    return up, holder, window


def test_restart_during_probation_reopens_the_window_and_a_model_with_nothing_to_go_back_to_is_unloaded(
        tmp_path, keys, site):
    key, pub = keys
    root, url = site
    v1 = make_classifier(tmp_path / "v1.onnx", version=1)
    up, holder, window = _updater(tmp_path, pub, v1, health=True)
    v2 = make_classifier(root / "v2.onnx", version=2, seed=2, embed_card=False)
    assert up.apply(announcement(v2, key, f"{url}/v2.onnx", 2))
    assert (holder.ref.version, holder.model_state) == (2, "updating") and "on probation" in holder.detail
    assert not up.apply(announcement(v2, key, f"{url}/v2.onnx", 5, expires_in=-10))  # a refusal meanwhile
    # the agent restarts before the window closed: v2 runs again, on probation again
    up, holder, window = _updater(tmp_path, pub, v1, health=True)
    assert (holder.ref.version, holder.model_state, window.probation) == (2, "updating", 2)
    assert "restarted before its health window passed" in holder.detail
    for _ in range(5):
        window.record(2, "ok", 0.8)
    up.check_health()
    assert (holder.ref.version, holder.model_state) == (2, "ok") and "passed its health window" in holder.detail
    up, holder, window = _updater(tmp_path, pub, v1, health=True)  # passed: no new window after a restart
    assert (holder.model_state, window.probation) == ("ok", None)

    # a model-less agent (its configured model is broken) installs a model that then fails its window
    other = tmp_path / "other"
    (other / "broken.onnx").parent.mkdir()
    (other / "broken.onnx").write_bytes(b"not a model")
    up, holder, window = _updater(other, pub, other / "broken.onnx", health=True)
    assert holder.get() is None and holder.model_state == "failed"
    nan = make_faulty_classifier(root / "nan3.onnx", "nan", version=3)
    assert up.apply(announcement(nan, key, f"{url}/nan3.onnx", 3))
    window.record(3, "nonfinite")
    up.check_health()
    assert holder.get() is None and holder.model_state == "failed"
    assert "v3 failed its health window" in holder.detail and "no model runs until an update" in holder.detail
    assert ModelStore(other / "data" / "models").load().blocked == (3,)


# -- the real agent over MQTT ---------------------------------------------------------------

def _agent_config(tmp_path, broker, pub, **health):
    model = make_classifier(tmp_path / "v1.onnx", version=1)
    cfg = base_config(tmp_path, broker, model,
                      updates={"enabled": True, "trusted_keys": [pub], "allow_http": True,
                               "health": {"window_s": 1.0, "min_frames": 10, **health}})
    cfg["cameras"][0]["synthetic"]["fps"] = 40  # leave CPU for the other tests' processes
    return write_config(tmp_path / "a.toml", cfg)


def _statuses(collector, since: int = 0) -> list[tuple[int, str]]:
    with collector.lock:
        return [(s.model_version, s.model_state) for s in collector.statuses[since:] if s.state == "online"]


def test_nan_model_is_reverted_blocked_and_never_sent_then_a_good_one_passes(broker, tmp_path, keys, site):
    key, pub = keys
    root, url = site
    path = _agent_config(tmp_path, broker, pub)
    nan = make_faulty_classifier(root / "v2.onnx", "nan", version=2)
    good = make_classifier(root / "v3.onnx", version=3, seed=3, embed_card=False)
    collector = Collector(broker.host, broker.port)
    raw = Recorder(broker.host, broker.port, [SAMPLES_FILTER, TELEMETRY_FILTER])
    try:
        with running(path) as agent:
            assert wait_until(lambda: (1, "ok") in _statuses(collector), 20)
            assert wait_until(lambda: any(s.model_version == 1 for s in list(collector.received)), 20)
            publish(broker.host, broker.port, announce_topic("shapes"),
                    encode(announcement(nan, key, f"{url}/v2.onnx", 2)), retain=True)
            assert wait_until(lambda: (1, "reverted") in _statuses(collector), 20), _statuses(collector)
            seen = _statuses(collector)
            assert (2, "updating") in seen and seen.index((2, "updating")) < seen.index((1, "reverted"))
            detail = collector.last_status().detail
            assert "v2 failed its health window" in detail and "NaN/inf" in detail and "reverted to v1" in detail
            assert agent.counters.get("nonfinite_output") > 0 and agent.counters.get("encode_error") == 0
            frames = agent.frames
            assert wait_until(lambda: agent.frames > frames + 10, 10)  # back on v1 and inferring
            errors = agent.inference_errors
            assert errors >= agent.counters.get("nonfinite_output") > 0
            assert wait_until(lambda: agent.frames > frames + 20, 10)
            assert agent.inference_errors == errors
            assert agent.updater.store.load().blocked == (2,)
        # a restart: the retained v2 announcement comes back and is ignored
        restart = len(collector.statuses)
        with running(path) as agent:
            assert wait_until(lambda: agent.uplink.connections >= 1 and agent.frames > 20, 20)
            assert wait_until(lambda: _statuses(collector, restart), 10)
            assert agent.holder.ref.version == 1 and agent.inference_errors == 0
            assert all(v == 1 for v, _ in _statuses(collector, restart)), _statuses(collector, restart)
            # a good v3 replaces the retained announcement, installs and passes its window
            publish(broker.host, broker.port, announce_topic("shapes"),
                    encode(announcement(good, key, f"{url}/v3.onnx", 3)), retain=True)
            assert wait_until(lambda: (3, "ok") in _statuses(collector, restart), 20), _statuses(collector, restart)
            assert "v3 passed its health window" in collector.last_status().detail
            assert (3, "updating") in _statuses(collector, restart)
            assert wait_until(lambda: any(s.model_version == 3 for s in list(collector.received)), 20)
    finally:
        collector.close()
        raw.close()
    samples, telemetry = [], []
    while not raw.messages.empty():
        topic, payload, _ = raw.get()
        msg = decode(topic, payload)  # every payload on the wire decodes: no NaN ever left the agent
        (samples if isinstance(msg, Sample) else telemetry).append(msg)
    assert samples and all(s.model_version in (1, 3) for s in samples)
    assert all(np.isfinite(s.scores).all() for s in samples)
    # what the server's rollout controller reads: inference errors while v2 ran
    assert any(isinstance(t, Telemetry) and t.inference_errors > 0 for t in telemetry)


def test_model_that_throws_on_real_frames_is_reverted(broker, tmp_path, keys, site):
    key, pub = keys
    root, url = site
    path = _agent_config(tmp_path, broker, pub)
    bad = make_faulty_classifier(root / "v2.onnx", "error", version=2)
    collector = Collector(broker.host, broker.port)
    try:
        with running(path) as agent:
            assert wait_until(lambda: (1, "ok") in _statuses(collector), 20)
            publish(broker.host, broker.port, announce_topic("shapes"),
                    encode(announcement(bad, key, f"{url}/v2.onnx", 2)), retain=True)
            assert wait_until(lambda: (1, "reverted") in _statuses(collector), 20), _statuses(collector)
            detail = collector.last_status().detail
            assert "v2 failed its health window" in detail and "inference error(s)" in detail
            assert agent.counters.get("inference_error") > 0 and agent.counters.get("nonfinite_output") == 0
            assert all(s.model_version == 1 for s in list(collector.received))
    finally:
        collector.close()
