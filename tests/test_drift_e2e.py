"""Drift end to end: a real agent's drifting camera raises PSI past the threshold; the alert fires everywhere.

The real server (EmbeddedServer: collector, publishing, fleet, HTTP) on the
broker fixture, two real agents (``agent.pipeline.Agent``) running the
registered model v1, whose reference histogram was computed by
``trainer.drift.reference`` on its "test split" (120 undrifted synthetic
frames). ``steady`` watches exactly those frames (a looping folder), so its
live histogram matches the reference; ``drifting`` watches the synthetic
camera with ``drift_per_frame``. The test reads the Drift API, /metrics,
the MQTT event topic, a real webhook receiver over HTTP, the configuration
bundle the alert pushed for the drifting agent's group, and the agent
applying it, then the Drift page in Chromium.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import cv2
import httpx
import pytest

from agent.synthetic import SyntheticCamera
from agent_helpers import base_config, make_classifier, running, write_config
from mqtt_util import Recorder, wait_until
from trainer.drift.monitor import drift_topic
from trainer.drift.reference import store_reference
from trainer.publish import keys
from trainer.publish.publisher import register_file
from trainer.publish.registry import Registry
from trainer.server.config import ServerConfig
from trainer.server.embedded import EmbeddedServer

pytestmark = pytest.mark.timeout(240)
TOKEN = "drift-test-token-0123456789"


class Webhook:
    """A real HTTP receiver on a free loopback port that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/drift"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_test_split(folder: Path, n: int = 120) -> list[Path]:
    """``n`` undrifted synthetic scenes (one frame per scene), as the model's frozen test split."""
    folder.mkdir(parents=True)
    cam = SyntheticCamera(seed=100, width=96, height=72, noise=0.0)
    paths = [folder / f"{i:04d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        cv2.imwrite(str(path), cam.frame(i * cam.hold).image)
    return paths


def agent_config(tmp: Path, broker, agent_id: str, model: Path, key: Path, camera: dict) -> Path:
    cfg = base_config(tmp / agent_id, broker, model, agent_id=agent_id, groups=["dock"],
                      sampling={"per_minute": 10})
    cfg["cameras"] = [{"id": f"{agent_id}-cam", **camera}]
    cfg["updates"] = {**cfg["updates"], "trusted_key_files": [str(key)]}
    (tmp / agent_id).mkdir(parents=True)
    return write_config(tmp / agent_id / "agent.toml", cfg)


@pytest.fixture
def rig(tmp_path, broker):
    key = keys.generate(tmp_path / "keys")
    model = make_classifier(tmp_path / "v1.onnx", version=1)
    split = write_test_split(tmp_path / "test-split")
    with Registry(tmp_path / "server") as registry:  # what a round leaves behind: v1 with its reference
        v1 = register_file(registry, model, "shapes")
        assert store_reference(registry, "shapes", v1.version, v1.file_path,
                               [SimpleNamespace(image_path=p) for p in split])
    hook = Webhook()
    raw = {"mqtt": {"host": broker.host, "port": broker.port, "batch_ms": 10},
           "http": {"port": 0}, "store": {"data_dir": str(tmp_path / "server")},
           "publish": {"model_name": "shapes", "signing_key": str(key.private), "base_url": "http://127.0.0.1:9",
                       "mqtt_host": broker.host, "mqtt_port": broker.port,
                       "drift": {"window_s": 3600, "min_samples": 240, "webhook_url": hook.url,
                                 "webhook_timeout_s": 2, "raise_budget": True, "budget_factor": 3,
                                 "budget_base_per_minute": 10}}}
    events = Recorder(broker.host, broker.port, [drift_topic("+")])
    steady = agent_config(tmp_path, broker, "steady", model, key.public,
                          {"source": str(split[0].parent), "kind": "folder", "on_eof": "loop", "max_fps": 40})
    drifting = agent_config(tmp_path, broker, "drifting", model, key.public,
                            {"source": "synthetic", "synthetic": {"seed": 1, "width": 96, "height": 72, "fps": 40,
                                                                  "drift_per_frame": 0.01}})
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(EmbeddedServer(ServerConfig.model_validate(raw), TOKEN))
        http = stack.enter_context(httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"},
                                                timeout=30))
        agents = {name: stack.enter_context(running(path, seed=i))
                  for i, (name, path) in enumerate((("steady", steady), ("drifting", drifting)))}
        yield SimpleNamespace(srv=srv, http=http, hook=hook, events=events, agents=agents, tmp=tmp_path)
    events.close()
    hook.close()


def drift_of(http: httpx.Client, agent_id: str) -> dict | None:
    rows = {a["agent_id"]: a for a in http.get("/api/drift").json()["agents"]}
    return rows.get(agent_id)


def test_a_drifting_camera_passes_the_threshold_and_the_alert_fires(rig):
    http = rig.http
    assert wait_until(lambda: (d := drift_of(http, "drifting")) is not None and d["alerting"], 90), \
        http.get("/api/drift").json()
    d = drift_of(http, "drifting")
    assert d["psi"] > 0.25 and d["level"] == "drift" and d["samples"] >= 240 and d["reference_version"] == 1
    assert d["cameras"] == ["drifting-cam"] and d["config_group"] == "dock"
    # the agent's one camera has its own row (from telemetry.camera_hist); with one camera the pooled track
    # is that camera, so only the pooled one alerts
    (cam,) = d["per_camera"]
    assert (cam["camera"], cam["level"], cam["alerting"]) == ("drifting-cam", "drift", False) and cam["psi"] > 0.25
    detail = http.get("/api/drift/drifting").json()
    history = [p for _, p in detail["history"]]
    assert history[-1] > 0.25 and set(detail["reference"]) <= {"circle", "square", "triangle"}
    # the agent on the test split's own frames: judged, and stable or at most moderate, never alerting
    assert wait_until(lambda: (s := drift_of(http, "steady")) is not None and s["samples"] >= 240, 60)
    s = drift_of(http, "steady")
    assert s["psi"] < 0.25 and s["level"] in ("stable", "moderate") and not s["alerting"], s
    assert s["psi"] < d["psi"]

    # the alert: an MQTT event on the documented topic, the webhook, the metrics
    topic, payload, retained = rig.events.get(timeout=10)
    event = json.loads(payload)
    assert (topic, retained) == (drift_topic("drifting"), False)
    assert (event["state"], event["agent_id"], event["model_version"]) == ("fired", "drifting", 1)
    assert event["psi"] > 0.25 and event["cameras"] == ["drifting-cam"] and event["camera"] == ""
    assert wait_until(lambda: rig.hook.bodies, 10) and rig.hook.bodies[0]["agent_id"] == "drifting"
    metrics = http.get("/metrics").text
    assert 'edgeloop_drift_alerts_total{agent="drifting"} 1' in metrics
    assert 'edgeloop_drift_psi{agent="steady"}' in metrics
    assert 'edgeloop_drift_alert_channel_total{channel="webhooks"} 1' in metrics

    # the budget: a bundle for the drifting agent's group with sampling.per_minute raised 10 -> 30,
    # which the agents of the group apply and report
    assert wait_until(lambda: rig.srv.service.fleet.bundles.versions("dock"), 10)
    bundles = rig.srv.service.fleet.bundles.versions("dock")
    assert bundles[0]["settings"] == {"sampling": {"per_minute": 30}} and "drift on drifting" in bundles[0]["note"]
    assert wait_until(lambda: rig.agents["drifting"].cfg.sampling.per_minute == 30, 20)

    if os.environ.get("EDGELOOP_SCREENSHOTS") or Path("/usr/bin/chromium").exists():
        drift_page(rig)


def drift_page(rig) -> None:
    from test_ui_review import browser_page

    base = rig.srv.url.rstrip("/")
    with browser_page((1280, 800)) as (page, errors):
        page.goto(base + "/drift")
        page.wait_for_url("**/login?next=*")
        page.fill("#token", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/drift")
        page.wait_for_selector("#drift-body tr[data-agent='drifting'][data-alerting='yes']")
        assert page.get_attribute("#drift-body tr[data-agent='drifting']", "data-level") == "drift"
        assert "alerting" in page.inner_text("#drift-body tr[data-agent='drifting']")
        assert page.get_attribute("#drift-body tr.camera-row[data-of='drifting'][data-camera='drifting-cam']",
                                  "data-level") == "drift"
        assert page.locator("nav a[href='/drift']").count() == 1
        page.click("#drift-body tr[data-agent='drifting']")
        page.wait_for_selector("#drift-class-table tr[data-label] svg rect", state="attached")
        if os.environ.get("EDGELOOP_SCREENSHOTS"):
            page.screenshot(path=str(Path(os.environ["EDGELOOP_SCREENSHOTS"]) / "drift.png"), full_page=True)
        assert not errors, errors
