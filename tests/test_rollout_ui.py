"""The Models page shows where a staged rollout stands and pauses, resumes and aborts it (headless Chromium).

The real server (uvicorn, ``[publish]`` with three configured stages, the
real broker) and the real page. The rollout itself is driven over HTTP; one
agent's retained status makes it the known canary, which never reports the
new version, so the rollout stays in its first stage while the page is used.
(The rollout with real agents is tests/test_rollout_stages.py.) With
``EDGELOOP_SCREENSHOTS=docs/screenshots`` it also writes models-rollout.png.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import factories
import pytest

from mqtt_util import publish
from protocol import encode
from protocol.topics import status_topic
from test_ui_review import TOKEN, browser_page, login, running_server
from trainer.publish import keys
from trainer.publish.registry import NewModel, Registry
from trainer.publish.simfleet import tiny_classifier
from trainer.synthetic.shapes import CLASSES

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]
NAME = "shapes"
STAGES = [{"name": "canary", "agents": ["dock-cam-1"], "hold_s": 120},
          {"name": "half", "percent": 50, "hold_s": 300},
          {"name": "everyone", "everyone": True, "hold_s": 0}]


def post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_stage_progress_pause_resume_and_abort_on_the_models_page(tmp_path: Path, broker) -> None:
    data = tmp_path / "data"
    with Registry(data) as registry:  # the fleet model and a candidate, before the server opens the registry
        for version in (1, 2):
            f = tiny_classifier(tmp_path / f"v{version}.onnx", NAME, CLASSES, version=version, seed=version)
            registry.register(NewModel(name=NAME, file=f, task="classification", labels=CLASSES,
                                       metrics={"accuracy": 0.5 + version / 10}),
                              state="fleet" if version == 1 else "candidate")
    key = keys.generate(tmp_path / "keys")
    publish(broker.host, broker.port, status_topic("dock-cam-1"),
            encode(factories.status(agent_id="dock-cam-1", model_name=NAME, model_version=1)), retain=True)
    rollout = {"discovery_s": 0.3, "tick_s": 0.1, "install_timeout_s": 600, "stages": STAGES}
    with running_server(data, "classification", publish={
            "model_name": NAME, "signing_key": str(key.private), "base_url": "http://127.0.0.1:1",
            "mqtt_host": broker.host, "mqtt_port": broker.port, "rollout": rollout}) as (base, _store):
        assert post(base, f"/api/models/{NAME}/2/publish", {"staged": True})["staged"]
        with browser_page((1400, 900)) as (page, errors):
            page.on("dialog", lambda d: d.accept())  # the confirm() before halting
            login(page, base, "/models")
            page.wait_for_selector("#rollout-stages[data-stage='1'] #stages tr[data-stage='everyone']")
            assert page.inner_text("#rollout-stage") == "Stage 1 of 3"
            states = page.eval_on_selector_all("#stages tbody tr", "rows => rows.map(r => r.dataset.state)")
            assert states == ["current", "waiting", "waiting"]
            assert "0 of 1" in page.inner_text("#stages tr[data-stage='canary']")
            page.wait_for_selector("#canaries tr[data-agent='dock-cam-1']")
            assert "left in the hold" in page.inner_text("#rollout-hold")

            page.click("#btn-pause")
            page.wait_for_selector("#rollout-stages[data-paused='yes']")
            page.wait_for_selector("#rollout[data-state='paused']")
            page.wait_for_selector("#btn-pause:disabled")
            assert page.is_enabled("#btn-resume") and "paused" in page.inner_text("#rollout-hold")
            if os.environ.get("EDGELOOP_SCREENSHOTS"):
                out = Path(os.environ["EDGELOOP_SCREENSHOTS"])
                out.mkdir(parents=True, exist_ok=True)
                page.locator("#rollout-panel").screenshot(path=str(out / "models-rollout.png"))

            page.click("#btn-resume")
            page.wait_for_selector("#rollout-stages[data-paused='no']")
            page.wait_for_selector("#rollout[data-state='watching']")
            page.click("#btn-halt")
            page.wait_for_selector("#rollout[data-state='halted']", timeout=20_000)
            assert "cancelled by an operator" in page.inner_text("#rollout")
            page.wait_for_selector("#btn-pause:disabled")
            page.wait_for_selector("#btn-resume:disabled")
            assert not errors, errors
