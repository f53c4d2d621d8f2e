"""The drift monitor on its own: windows, references by version, alert delivery that never blocks ingest.

A real Registry (SQLite) holds the model and its reference; alerts go to a
real HTTP receiver on a loopback socket; telemetry is fed as decoded
``Telemetry`` objects with a controlled clock, as the publishing service's
FleetWatch would hand them over.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mqtt_util import wait_until
from protocol.messages import HIST_BINS
from trainer.drift.monitor import DriftConfig, DriftMonitor, drift_topic
from trainer.publish.registry import NewModel, Registry
from trainer.publish.simfleet import tiny_classifier

REF = {"cat": [0] * 8 + [50, 150], "dog": [0] * 8 + [50, 150]}
SAME = {"cat": (0,) * 8 + (5, 15), "dog": (0,) * 8 + (5, 15)}  # the reference's shape, a tenth of it
LOW = {"cat": (0, 0, 10, 10) + (0,) * 6, "dog": (0,) * 8 + (5, 15)}  # cats now unsure


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Receiver:
    """A webhook receiver that can be told to hang (to prove the ingest side never waits on it)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.release = threading.Event()
        self.release.set()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.release.wait(30)
                hook.bodies.append(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry(tmp_path):
    r = Registry(tmp_path / "data")
    f = tiny_classifier(tmp_path / "m.onnx", "m", ("cat", "dog"), seed=1)
    v1 = r.register(NewModel(name="m", file=f, task="classification", labels=("cat", "dog")))
    r.set_reference("m", v1.version, REF, 400)
    yield r
    r.close()


@pytest.fixture
def receiver():
    rec = Receiver()
    yield rec
    rec.close()


def make(registry, receiver, **cfg):
    sent: list[tuple[str, dict]] = []
    clock = Clock()
    config = DriftConfig(min_samples=20, min_class_samples=10, window_s=60, webhook_url=receiver.url,
                         webhook_timeout_s=2, **cfg)
    monitor = DriftMonitor(registry, "m", config, lambda t, p: sent.append((t, json.loads(p))), clock=clock)
    return monitor, clock, sent


def telemetry(agent: str, hist: dict, version: int = 1):
    from factories import telemetry as t
    return t(agent_id=agent, model_version=version, conf_hist={k: tuple(v) for k, v in hist.items()})


def scaled(hist: dict, k: int) -> dict:
    return {label: tuple(k * c for c in counts) for label, counts in hist.items()}


def add(a: dict, b: dict) -> dict:
    return {label: tuple(x + y for x, y in zip(a.get(label, (0,) * HIST_BINS), b.get(label, (0,) * HIST_BINS)))
            for label in set(a) | set(b)}


def test_stable_then_drift_in_the_window_fires_once_then_clears(registry, receiver):
    monitor, clock, sent = make(registry, receiver)
    cumulative = SAME
    monitor.on_telemetry(telemetry("a1", cumulative))
    row = monitor.agent("a1")
    assert row["level"] == "stable" and row["psi"] == pytest.approx(0.0, abs=1e-9) and row["samples"] == 40
    # the camera changes: after a full window, only the new counts are compared
    for _ in range(3):
        clock.t += 40
        cumulative = add(cumulative, scaled(LOW, 3))
        monitor.on_telemetry(telemetry("a1", cumulative))
    row = monitor.agent("a1")
    assert row["samples"] == 2 * 3 * 40 and row["level"] == "drift" and row["alerting"]
    assert row["per_class"]["cat"] > 0.25 and row["per_class"]["dog"] == pytest.approx(0.0, abs=1e-9)
    assert wait_until(lambda: sent and receiver.bodies, 10)
    topic, event = sent[0]
    assert topic == drift_topic("a1") and event["state"] == "fired" and receiver.bodies[0] == event
    assert monitor.agents()[0]["alerts"] == 1
    # back to normal for a whole window: cleared, once
    for _ in range(3):
        clock.t += 40
        cumulative = add(cumulative, scaled(SAME, 3))
        monitor.on_telemetry(telemetry("a1", cumulative))
    assert not monitor.agent("a1")["alerting"]
    assert wait_until(lambda: len(sent) == 2, 10) and sent[1][1]["state"] == "cleared"
    assert 'edgeloop_drift_alerts_total{agent="a1"} 1' in monitor.prometheus_text()
    monitor.close()


def test_a_restarted_agent_starts_its_window_over(registry, receiver):
    monitor, clock, _ = make(registry, receiver)
    monitor.on_telemetry(telemetry("a1", scaled(SAME, 5)))
    clock.t += 70
    monitor.on_telemetry(telemetry("a1", scaled(SAME, 6)))
    assert monitor.agent("a1")["samples"] == 40  # the last window: 6x - 5x
    clock.t += 10
    monitor.on_telemetry(telemetry("a1", SAME))  # counts went down: a restart, not a negative window
    assert monitor.agent("a1")["samples"] == 40 and monitor.agent("a1")["level"] == "stable"
    monitor.close()


def test_references_follow_the_version_an_agent_runs(registry, receiver, tmp_path):
    monitor, _, _ = make(registry, receiver)
    monitor.on_telemetry(telemetry("old", SAME, version=7))  # a version the registry does not know
    assert monitor.agent("old")["level"] == "no_reference" and monitor.agent("old")["psi"] is None
    back = registry.register_rollback("m", 1)  # a rollback re-announces v1's file: v1's reference applies
    monitor.on_telemetry(telemetry("rb", SAME, version=back.version))
    row = monitor.agent("rb")
    assert (row["reference_version"], row["level"]) == (1, "stable") and row["reference"] == REF
    monitor.close()


def test_alert_delivery_never_blocks_ingest_and_a_full_queue_drops_loudly(registry, receiver):
    monitor, _, sent = make(registry, receiver, queue_size=1)
    receiver.release.clear()  # the webhook hangs: the alert thread is stuck in its POST
    monitor.on_telemetry(telemetry("a0", LOW))
    assert wait_until(lambda: sent, 10)  # a0's alert was taken off the queue, its webhook now hangs
    for i in range(1, 4):  # ingest goes on; one alert waits in the queue, the others are dropped
        monitor.on_telemetry(telemetry(f"a{i}", LOW))
    assert [a["alerting"] for a in monitor.agents()] == [True] * 4
    assert monitor.counters["alerts_dropped"] == 2
    receiver.release.set()
    assert wait_until(lambda: monitor.counters["webhooks"] + monitor.counters["webhook_failures"] == 2, 10)
    assert 'channel="alerts_dropped"} 2' in monitor.prometheus_text()
    monitor.close()


def test_one_failing_channel_does_not_stop_the_others(registry, receiver):
    def broken(_topic, _payload):
        raise OSError("broker gone")

    monitor = DriftMonitor(registry, "m", DriftConfig(min_samples=20, webhook_url=receiver.url), broken)
    monitor.on_telemetry(telemetry("a1", LOW))
    assert wait_until(lambda: receiver.bodies, 10)
    assert monitor.counters["mqtt_failures"] == 1 and monitor.counters["webhooks"] == 1
    monitor.close()


def test_budget_raise_without_bundles_is_a_counted_decision(registry, receiver):
    monitor, _, _ = make(registry, receiver, raise_budget=True)
    monitor.status_of = lambda _a: None  # no status known: no configuration group
    monitor.on_telemetry(telemetry("a1", LOW))
    assert wait_until(lambda: monitor.counters["budget_no_group"] == 1, 10)
    monitor.close()


def test_bad_drift_config_is_refused():
    with pytest.raises(ValueError, match="clear_psi"):
        DriftConfig(alert_psi=0.2, clear_psi=0.3)
    with pytest.raises(ValueError):
        DriftConfig(webhook_url="ftp://x")
    with pytest.raises(ValueError):
        DriftConfig(windw_s=5)


def test_two_cameras_one_drifting_only_that_camera_alerts(registry, receiver):
    monitor, clock, sent = make(registry, receiver)
    steady, drifting = scaled(SAME, 10), LOW  # 400 frames as the reference, 40 frames of unsure cats
    pooled = add(steady, drifting)
    monitor.on_telemetry(replace(telemetry("a1", pooled), camera_hist={"gate": steady, "dock": drifting}))
    row = monitor.agents()[0]
    cams = {c["camera"]: c for c in row["per_camera"]}
    assert [c["camera"] for c in row["per_camera"]] == ["dock", "gate"]  # sorted
    assert cams["gate"]["level"] == "stable" and not cams["gate"]["alerting"] and cams["gate"]["samples"] == 400
    assert cams["dock"]["level"] == "drift" and cams["dock"]["alerting"] and cams["dock"]["samples"] == 40
    assert row["samples"] == 440 and row["psi"] < 0.25 and not row["alerting"]  # the pooled figure is kept
    assert wait_until(lambda: sent, 10)
    assert [(e["agent_id"], e["camera"], e["state"]) for _, e in sent] == [("a1", "dock", "fired")]
    assert sent[0][0] == drift_topic("a1")
    detail = monitor.agent("a1")
    assert {c["camera"]: c["live"] for c in detail["per_camera"]}["dock"]["cat"] == list(LOW["cat"])
    text = monitor.prometheus_text()
    assert 'edgeloop_drift_alerts_total{agent="a1",camera="dock"} 1' in text
    assert 'edgeloop_drift_psi{agent="a1",camera="gate"} ' in text and 'edgeloop_drift_psi{agent="a1"} ' in text
    assert 'edgeloop_drift_alerts_total{agent="a1",camera="gate"}' not in text
    # the drifting camera recovers over a whole window: it clears, once; a model swap restarts the cameras
    clock.t += 70
    monitor.on_telemetry(replace(telemetry("a1", add(pooled, steady)),
                                 camera_hist={"gate": scaled(SAME, 20), "dock": add(drifting, scaled(SAME, 2))}))
    assert wait_until(lambda: len(sent) == 2, 10) and (sent[1][1]["camera"], sent[1][1]["state"]) == ("dock", "cleared")
    monitor.on_telemetry(replace(telemetry("a1", SAME, version=2), camera_hist={"gate": SAME}))
    assert [c["camera"] for c in monitor.agents()[0]["per_camera"]] == ["gate"]
    monitor.close()


def test_a_single_camera_alerts_through_the_pooled_track_only(registry, receiver):
    monitor, _, sent = make(registry, receiver)
    monitor.on_telemetry(replace(telemetry("a1", LOW), camera_hist={"gate": LOW}))
    row = monitor.agents()[0]
    assert row["alerting"] and row["per_camera"][0]["level"] == "drift" and not row["per_camera"][0]["alerting"]
    assert wait_until(lambda: sent, 10) and [e["camera"] for _, e in sent] == [""]
    monitor.close()
