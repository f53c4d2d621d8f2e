"""Commands from the server, end to end: real agents, a real broker, the real server over HTTP.

The server runs in this process under uvicorn (EmbeddedServer) against the
broker fixture; two agents run with agent_helpers.running. Every command goes
through ``POST /api/.../commands``, the agent answers with a Status naming the
command (``answered``), and the test reads the outcome the server recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent_helpers import base_config, make_classifier, running, write_config
from mqtt_util import wait_until
from trainer.server.config import ServerConfig
from trainer.server.embedded import EmbeddedServer

pytestmark = pytest.mark.timeout(180)
TOKEN = "fleet-test-token-0123456789"
ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def fleet_server(tmp: Path, broker, signing_key: Path | None = None):
    """The real server with MQTT on the broker fixture (and [publish], for bundle signing, when given a key)."""
    raw = {"mqtt": {"host": broker.host, "port": broker.port, "batch_ms": 10},
           "http": {"port": 0}, "store": {"data_dir": str(tmp / "server")}}
    if signing_key is not None:
        raw["publish"] = {"model_name": "shapes", "signing_key": str(signing_key), "base_url": "http://127.0.0.1:9",
                          "mqtt_host": broker.host, "mqtt_port": broker.port}
    with EmbeddedServer(ServerConfig.model_validate(raw), TOKEN) as srv:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}", "X-User": "ops"},
                          timeout=60) as http:
            assert wait_until(lambda: srv.service.fleet.link.client.is_connected(), timeout=20)
            yield srv, http


def agent_config(tmp: Path, broker, agent_id: str, groups: list[str], key_files: list[str] = (), **sections) -> Path:
    model = make_classifier(tmp / f"{agent_id}-model.onnx")
    cfg = base_config(tmp / agent_id, broker, model, **sections)
    cfg["cameras"] = [{"id": "cam1", "source": "synthetic",  # a few frames a second: the CPUs are shared
                       "synthetic": {"seed": 1, "width": 96, "height": 72, "fps": 5.0}}]
    cfg.update(agent_id=agent_id, groups=groups, tags={"site": f"{agent_id}-site", "camera": "synthetic"})
    cfg["updates"] = {**cfg["updates"], "trusted_key_files": list(key_files)}
    (tmp / agent_id).mkdir(parents=True, exist_ok=True)
    return write_config(tmp / agent_id / "agent.toml", cfg)


def reported(srv, *agent_ids: str) -> bool:
    known = {a["agent_id"] for a in srv.service.store.fleet()}
    return set(agent_ids) <= known


@pytest.fixture
def rig(tmp_path, broker):
    with fleet_server(tmp_path, broker) as (srv, http):
        a1 = agent_config(tmp_path, broker, "agent-1", ["north"])
        a2 = agent_config(tmp_path, broker, "agent-2", ["north", "dock"])
        with running(a1) as agent1, running(a2) as agent2:
            assert wait_until(lambda: reported(srv, "agent-1", "agent-2"), timeout=30)
            yield srv, http, agent1, agent2


def test_ping_one_agent_answers_with_its_fresh_status(rig):
    srv, http, agent1, _ = rig
    r = http.post("/api/agents/agent-1/commands", json={"action": "ping"})
    assert r.status_code == 200, r.text
    cmd = r.json()
    assert cmd["state"] == "answered" and cmd["agent_id"] == "agent-1" and cmd["issued_by"] == "ops"
    answer = cmd["answer"]
    assert answer["agent_id"] == "agent-1" and answer["state"] == "online" and cmd["id"] in answer["answered"]
    assert answer["tags"] == {"site": "agent-1-site", "camera": "synthetic"}
    assert answer["model_name"] == "shapes" and answer["model_state"] == "ok"
    assert http.get(f"/api/commands/{cmd['id']}").json() == cmd
    assert [c["id"] for c in http.get("/api/commands", params={"agent_id": "agent-1"}).json()] == [cmd["id"]]


def test_group_command_reaches_every_agent_of_the_group(rig):
    srv, http, agent1, agent2 = rig
    r = http.post("/api/groups/north/commands", json={"action": "resend_outbox"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["group"] == "north" and sorted(c["agent_id"] for c in out["commands"]) == ["agent-1", "agent-2"]
    assert {c["state"] for c in out["commands"]} == {"answered"}
    assert all(c["batch"] == out["batch"] and c["group"] == "north" for c in out["commands"])
    dock = http.post("/api/groups/dock/commands", json={"action": "ping"}).json()
    assert [c["agent_id"] for c in dock["commands"]] == ["agent-2"]
    assert http.get("/api/commands", params={"batch": out["batch"]}).json() == sorted(
        out["commands"], key=lambda c: c["agent_id"])


def test_reload_config_and_rollback_report_their_result(rig):
    srv, http, agent1, _ = rig
    reload = http.post("/api/agents/agent-1/commands", json={"action": "reload_config"}).json()
    assert reload["state"] == "answered" and "reload_config: sampling applied" in reload["answer"]["detail"]
    rollback = http.post("/api/agents/agent-1/commands", json={"action": "rollback"}).json()
    assert rollback["state"] == "answered"
    assert "rollback refused: updates are disabled" in rollback["answer"]["detail"]


def test_bad_commands_are_refused_and_nothing_is_sent(rig):
    srv, http, *_ = rig
    before = http.get("/api/commands").json()
    r = http.post("/api/agents/no-such-agent/commands", json={"action": "ping"})
    assert r.status_code == 404 and "no-such-agent" in r.json()["detail"]
    assert http.post("/api/groups/nobody/commands", json={"action": "ping"}).status_code == 404
    for body in ({"action": "reboot"}, {"action": "ping", "extra": 1}, {"action": "ping", "timeout_s": -1},
                 {"action": "ping", "args": {"x": "y" * 2000}},
                 {"action": "ping", "args": {"x": [1]}}, {}):
        r = http.post("/api/agents/agent-1/commands", json=body)
        assert r.status_code == 422, (body, r.text)
    assert http.post("/api/agents/bad%2Fid/commands", json={"action": "ping"}).status_code in (404, 422)
    assert http.get("/api/commands/c-missing").status_code == 404
    assert http.get("/api/commands").json() == before
    anonymous = httpx.post(srv.url + "api/agents/agent-1/commands", json={"action": "ping"})
    assert anonymous.status_code == 401


def test_a_stopped_agent_times_out_and_a_late_answer_is_not_invented(tmp_path, broker):
    with fleet_server(tmp_path, broker) as (srv, http):
        cfg = agent_config(tmp_path, broker, "agent-3", ["north"])
        with running(cfg):
            assert wait_until(lambda: reported(srv, "agent-3"), timeout=30)
        r = http.post("/api/agents/agent-3/commands", json={"action": "ping", "timeout_s": 1})
        assert r.status_code == 200
        cmd = r.json()
        assert cmd["state"] == "timed_out" and cmd["answer"] is None
        assert http.get(f"/api/commands/{cmd['id']}").json()["state"] == "timed_out"
        # A command sent without waiting is "sent" until its deadline passes.
        sent = http.post("/api/agents/agent-3/commands", json={"action": "ping", "wait": False, "timeout_s": 300})
        assert sent.json()["state"] == "sent"


def cli(srv, *argv: str) -> subprocess.CompletedProcess:
    """``edgeloop agents ...`` in its own process against the running server."""
    env = {**os.environ, "EDGELOOP_SERVER_TOKEN": TOKEN, "EDGELOOP_SERVER_URL": srv.url}
    return subprocess.run([sys.executable, "-m", "edgeloop", "agents", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_sends_commands_and_shows_the_answers(rig):
    srv, http, *_ = rig
    one = cli(srv, "command", "agent-1", "reload-config", "--user", "alice")
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith("agent-1: answered (c-") and "reload_config: sampling applied" in one.stdout
    group = cli(srv, "command", "--group", "north", "ping", "--json")
    assert group.returncode == 0, group.stderr
    out = json.loads(group.stdout)
    assert sorted(c["agent_id"] for c in out["commands"]) == ["agent-1", "agent-2"]
    command_id = one.stdout.split("(", 1)[1].split(")", 1)[0]
    assert http.get(f"/api/commands/{command_id}").json()["issued_by"] == "alice"
    missing = cli(srv, "command", "ghost", "ping")
    assert missing.returncode == 1 and "404" in missing.stderr and "ghost" in missing.stderr
    both = cli(srv, "command", "agent-1", "--group", "north", "ping")
    assert both.returncode == 2 and both.stdout == ""
    bad = cli(srv, "command", "agent-1", "ping", "--token", "wrong-token-0123456789")
    assert bad.returncode == 1 and "401" in bad.stderr


def test_rollback_is_answered_once_the_updater_has_done_it(tmp_path, broker):
    """With updates on, the rollback runs on the updater's own thread; the answer waits for its result."""
    with fleet_server(tmp_path, broker) as (srv, http):
        cfg = agent_config(tmp_path, broker, "agent-4", ["north"], updates={"enabled": True})
        with running(cfg):
            assert wait_until(lambda: reported(srv, "agent-4"), timeout=30)
            r = http.post("/api/agents/agent-4/commands", json={"action": "rollback"})
            cmd = r.json()
            assert cmd["state"] == "answered", cmd
            assert cmd["answer"]["model_state"] == "failed"
            assert "rollback refused: no previous model on disk" in cmd["answer"]["detail"]
            ping = http.post("/api/agents/agent-4/commands", json={"action": "ping"}).json()
            assert ping["state"] == "answered" and ping["id"] in ping["answer"]["answered"]
            assert cmd["id"] not in ping["answer"]["answered"]  # each answer is given once


def test_an_agent_refuses_a_command_delivered_after_its_expiry(rig, broker):
    from mqtt_util import publish
    from protocol import Command, encode
    from protocol.topics import command_topic

    import time

    srv, http, agent1, _ = rig
    now = time.time()
    late = Command("c-late", "resend_outbox", now - 900, expires_at=now - 300)  # a queue delivered it late
    publish(broker.host, broker.port, command_topic("agent-1"), encode(late))
    assert wait_until(lambda: agent1.counters.get("commands_expired") == 1, timeout=20)
    r = http.post("/api/agents/agent-1/commands", json={"action": "ping"})  # the server's own carry an expiry
    assert r.status_code == 200 and r.json()["state"] == "answered"
