"""Finding 5 of issue 11: a crashed agent shows offline, and a silent one shows stale on the Fleet page.

The agent sets its last will ("offline") before it connects, so the will carries the connect time; its
"online" status comes after. The store kept the newer-stamped status and threw the broker-delivered
will away, so an agent killed with -9 stayed "online" for good. The broker delivers a will when the
connection is gone: its arrival is what counts, not its stamp.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import factories
from agent_helpers import base_config, make_classifier, write_config
from mqtt_util import wait_until
from test_ingest_collector import _config
from trainer.server.service import Service
from trainer.store import Store

ROOT = Path(__file__).resolve().parents[1]


def _state(store: Store, agent: str) -> str | None:
    return next((a["state"] for a in store.fleet() if a["agent_id"] == agent), None)


@pytest.mark.slow
def test_an_agent_killed_with_sigkill_shows_offline(broker, tmp_path: Path) -> None:
    svc = Service(_config(broker, tmp_path / "server")).start()
    cfg = write_config(tmp_path / "agent.toml", base_config(
        tmp_path / "agent", broker, make_classifier(tmp_path / "m.onnx"),
        mqtt={"host": broker.host, "port": broker.port, "keepalive_s": 5, "reconnect_min_s": 0.2,
              "reconnect_max_s": 1.0}))
    proc = subprocess.Popen([sys.executable, "-m", "edgeloop", "agent", "--config", str(cfg), "--seed", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert svc.collector.connected.wait(10)
        assert wait_until(lambda: _state(svc.store, "agent-1") == "online", 60), "the agent never came online"
        # Let telemetry and a status refresh land after the connect, as in a long-running agent.
        assert wait_until(lambda: svc.store.telemetry_history("agent-1", 3).__len__() >= 2, 30)
        proc.kill()  # kill -9: the broker sees the socket close and publishes the will
        proc.wait(10)
        # Generous: the broker may also wait for 1.5 x keepalive (7.5 s) before it gives up on the client.
        assert wait_until(lambda: _state(svc.store, "agent-1") == "offline", 30), svc.store.fleet()
        [agent] = svc.store.fleet()
        assert agent["stale"] is False and agent["model_version"] == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        svc.stop()


def test_a_will_counts_on_arrival_but_does_not_roll_back_newer_facts(tmp_path: Path) -> None:
    t0 = 1_700_000_000.0
    will = factories.status(state="offline", at=t0, model_version=3)  # stamped when the agent connected
    with Store(tmp_path / "s") as store:
        store.record_fleet([factories.status(state="online", at=t0 + 1, model_version=3)], [], t0 + 1)
        store.record_fleet([factories.status(state="online", at=t0 + 50, model_version=4,
                                             detail="installed v4")], [], t0 + 50)
        store.record_fleet([will], [], t0 + 90)
        [a] = store.fleet(now=t0 + 91)
        assert a["state"] == "offline" and a["model_version"] == 4 and a["detail"] == "installed v4"
        assert a["last_seen"] == t0 + 90
        # A redelivered old "online" does not bring it back; the agent's next session does.
        store.record_fleet([factories.status(state="online", at=t0 + 50, model_version=4)], [], t0 + 95)
        assert store.fleet(now=t0 + 96)[0]["state"] == "offline"
        store.record_fleet([factories.status(state="online", at=t0 + 100, model_version=4)], [], t0 + 100)
        assert store.fleet(now=t0 + 101)[0]["state"] == "online"


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_the_fleet_page_shows_stale_agents(tmp_path: Path) -> None:
    from test_ui_review import browser_page, login, running_server

    with running_server(tmp_path / "data", "classification") as (base, store):
        now = time.time()
        store.record_fleet([factories.status(agent_id="quiet", state="online", at=now - 600)],
                           [factories.telemetry(agent_id="quiet", at=now - 600, period_s=10.0)], now - 600)
        store.record_fleet([factories.status(agent_id="busy", state="online", at=now)],
                           [factories.telemetry(agent_id="busy", at=now, period_s=10.0)], now)
        assert {a["agent_id"]: a["stale"] for a in store.fleet()} == {"busy": False, "quiet": True}
        with browser_page() as (page, errors):
            login(page, base, "/fleet")
            page.wait_for_selector("#fleet-body tr[data-agent='quiet']")
            quiet = page.locator("#fleet-body tr[data-agent='quiet'] td").nth(1)
            assert "stale" in quiet.inner_text() and quiet.locator(".dot.stale").count() == 1
            assert "stale" not in page.locator("#fleet-body tr[data-agent='busy'] td").nth(1).inner_text()
            assert "1 of 2 agents online" in page.locator("#fleet-summary").inner_text()
            assert "1 stale" in page.locator("#fleet-summary").inner_text()
            assert not errors, errors
