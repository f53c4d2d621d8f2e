"""Signed configuration bundles, end to end: the real server signs and publishes, real agents apply or refuse.

Bundles are pushed through ``POST /api/groups/{group}/bundles``; forged ones
(unsigned, tampered, signed by another key, for another group, replayed,
invalid settings under a good signature) are published straight onto the
group's topic, as someone with broker access would, and each must be refused
with its reason in the agent's Status while the previous settings keep running.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from agent.config import load_config
from agent.pipeline import Agent
from agent_helpers import running
from mqtt_util import publish, wait_until
from protocol import Command, ConfigBundle, encode
from protocol.bundle import Bundle, sign_bundle
from protocol.manifest import generate_keypair, load_private_key
from protocol.topics import config_topic
from test_fleet_commands import ROOT, agent_config, cli, fleet_server, reported
from trainer.publish import keys

pytestmark = pytest.mark.timeout(180)
NEW = {"sampling": {"strategies": [{"name": "margin", "threshold": 0.05}], "per_minute": 7},
       "uplink": {"telemetry_period_s": 2.5}}


@pytest.fixture
def rig(tmp_path, broker):
    key = keys.generate(tmp_path / "keys")
    with fleet_server(tmp_path, broker, key.private) as (srv, http):
        cfg = agent_config(tmp_path, broker, "agent-1", ["north"], [str(key.public)])
        other = agent_config(tmp_path, broker, "agent-2", ["south"], [str(key.public)])
        with running(cfg) as agent, running(other) as agent2:
            assert wait_until(lambda: reported(srv, "agent-1", "agent-2"), timeout=30)
            yield srv, http, agent, agent2, key, cfg


def _applied(agent, version: int) -> bool:
    return agent.bundles.version == version


def _live(http, agent_id: str) -> dict:
    for group in http.get("/api/groups").json():
        for a in group["agents"]:
            if a["agent_id"] == agent_id:
                return a
    return {}


def test_push_applies_live_and_rollback_restores(rig):
    srv, http, agent, agent2, key, cfg = rig
    file_sampling = agent.cfg.sampling
    r = http.post("/api/groups/north/bundles", json={"settings": NEW, "note": "quieter"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["created_by"] == "ops" and r.json()["settings"] == NEW
    assert wait_until(lambda: _applied(agent, 1), timeout=20)
    assert agent.cfg.sampling.per_minute == 7 and agent.sampler.cfg.strategies[0].name == "margin"
    assert agent.cfg.sampling.per_hour == file_sampling.per_hour  # keys the bundle does not name: the file's
    assert agent.uplink.cfg.uplink.telemetry_period_s == 2.5
    assert wait_until(lambda: _live(http, "agent-1").get("config_version") == 1, timeout=20)
    assert _live(http, "agent-1")["tags"] == {"site": "agent-1-site", "camera": "synthetic"}
    assert agent2.bundles.version == 0  # another group: never subscribed
    status = agent.status("online")
    assert (status.config_group, status.config_version) == ("north", 1)

    second = http.post("/api/groups/north/bundles", json={"settings": {"sampling": {"per_minute": 3}}}).json()
    assert second["version"] == 2
    assert wait_until(lambda: _applied(agent, 2), timeout=20)
    assert agent.cfg.sampling.per_minute == 3 and agent.cfg.sampling.strategies == file_sampling.strategies

    back = http.post("/api/groups/north/bundles/rollback", json={}).json()
    assert (back["version"], back["parent_version"], back["note"]) == (3, 1, "rollback to v1")
    assert wait_until(lambda: _applied(agent, 3), timeout=20)
    assert agent.cfg.sampling.per_minute == 7 and agent.uplink.cfg.uplink.telemetry_period_s == 2.5
    assert [b["version"] for b in http.get("/api/groups/north/bundles").json()] == [3, 2, 1]
    assert http.post("/api/groups/north/bundles/rollback", json={"to": 3}).status_code == 409
    assert http.post("/api/groups/north/bundles/rollback", json={"to": 9}).status_code == 404
    assert http.post("/api/groups/empty/bundles/rollback", json={}).status_code == 404


def test_invalid_settings_are_refused_by_the_server_and_nothing_is_published(rig):
    srv, http, agent, _, key, cfg = rig
    assert http.post("/api/groups/north/bundles", json={"settings": NEW}).status_code == 200
    assert wait_until(lambda: _applied(agent, 1), timeout=20)
    for settings, where in (({"sampling": {"per_minute": -1}}, "sampling.per_minute"),
                            ({"sampling": {"seed": 4}}, "sampling.seed: cannot change live"),
                            ({"model": {"path": "/tmp/x.onnx"}}, "model: not a section"),
                            ({"uplink": {"telemetry_period_s": "soon"}}, "uplink.telemetry_period_s"),
                            ({"sampling": {"strategies": [{"name": "margin", "treshold": 0.1}]}}, "treshold"),
                            ({"sampling": {"classes": ["c" * 60] * 2000}}, "bytes > 65536")):
        r = http.post("/api/groups/north/bundles", json={"settings": settings})
        assert r.status_code == 422 and where in r.json()["detail"], (settings, r.text)
    assert http.post("/api/groups/north/bundles", json={"settings": {}, "extra": 1}).status_code == 422
    assert [b["version"] for b in http.get("/api/groups/north/bundles").json()] == [1]
    assert agent.bundles.version == 1 and agent.cfg.sampling.per_minute == 7


def _forged(group: str, version: int, settings: dict, key_pem: bytes) -> tuple[bytes, bytes]:
    return sign_bundle(Bundle(group=group, version=version, settings=settings, created=int(time.time())),
                       load_private_key(key_pem))


def test_agents_refuse_forged_bundles_and_keep_the_previous(rig, broker):
    srv, http, agent, _, key, cfg = rig
    assert http.post("/api/groups/north/bundles", json={"settings": NEW}).status_code == 200
    assert wait_until(lambda: _applied(agent, 1), timeout=20)
    good = key.private.read_bytes()
    other_key, _ = generate_keypair()
    data, sig = _forged("north", 5, {"sampling": {"per_minute": 1}}, good)
    tampered = data.replace(b'"per_minute":1', b'"per_minute":9')
    cases = [
        (ConfigBundle(data, b""), "unsigned"),
        (ConfigBundle(tampered, sig), "bad_signature"),
        (ConfigBundle(*_forged("north", 5, {"sampling": {"per_minute": 1}}, other_key)), "bad_signature"),
        (ConfigBundle(*_forged("south", 5, {"sampling": {"per_minute": 1}}, good)), "wrong_group"),
        (ConfigBundle(*_forged("north", 1, {"sampling": {"per_minute": 1}}, good)), "not_newer"),
        (ConfigBundle(*_forged("north", 6, {"sampling": {"per_minute": -5}}, good)), "invalid: sampling.per_minute"),
        (ConfigBundle(*_forged("north", 7, {"updates": {"enabled": False}}, good)), "invalid: updates"),
    ]
    for message, reason in cases:
        publish(broker.host, broker.port, config_topic("north"), encode(message))
        assert wait_until(lambda: reason in agent.bundles.detail, timeout=20), (reason, agent.bundles.detail)
        assert agent.bundles.version == 1 and agent.cfg.sampling.per_minute == 7
        assert reason in agent.status("online").detail
    assert wait_until(lambda: "refused" in _live(http, "agent-1").get("status_detail", ""), timeout=20)
    # A good one afterwards applies and clears the refusal.
    publish(broker.host, broker.port, config_topic("north"), encode(ConfigBundle(*_forged(
        "north", 8, {"sampling": {"per_minute": 2}}, good))))
    assert wait_until(lambda: _applied(agent, 8), timeout=20)
    assert agent.bundles.detail == "" and agent.cfg.sampling.per_minute == 2


def test_the_applied_bundle_survives_a_restart_and_a_tampered_file_is_refused(tmp_path, broker):
    key = keys.generate(tmp_path / "keys")
    with fleet_server(tmp_path, broker, key.private) as (srv, http):
        cfg = agent_config(tmp_path, broker, "agent-1", ["north"], [str(key.public)])
        with running(cfg) as agent:
            assert wait_until(lambda: reported(srv, "agent-1"), timeout=30)
            assert http.post("/api/groups/north/bundles", json={"settings": NEW}).status_code == 200
            assert wait_until(lambda: _applied(agent, 1), timeout=20)
            saved = agent.cfg.data_dir / "config-bundle.json"
    # No broker needed: the bundle comes from disk, verified again.
    offline = Agent(load_config(cfg), cfg)
    assert offline.bundles.version == 1 and offline.cfg.sampling.per_minute == 7
    offline.outbox.close()
    doc = json.loads(saved.read_text())
    doc["bundle"] = doc["bundle"][:-8] + "AAAAAAA="
    saved.write_text(json.dumps(doc))
    refused = Agent(load_config(cfg), cfg)
    assert refused.bundles.version == 0 and "refused" in refused.bundles.detail
    assert refused.cfg.sampling.per_minute == refused.file_cfg.sampling.per_minute
    refused.outbox.close()


def test_bundles_are_off_without_a_signing_key(tmp_path, broker):
    with fleet_server(tmp_path, broker) as (srv, http):
        r = http.post("/api/groups/north/bundles", json={"settings": NEW})
        assert r.status_code == 404 and "signing key" in r.json()["detail"]
        assert http.get("/api/groups/north/bundles").json() == []


def test_cli_pushes_lists_and_rolls_back(rig, tmp_path):
    srv, http, agent, _, key, cfg = rig
    settings = tmp_path / "north.toml"
    settings.write_text('[sampling]\nper_minute = 4\nstrategies = [{ name = "entropy", threshold = 0.7 }]\n'
                        '[uplink]\ntelemetry_period_s = 3.0\n')
    pushed = cli(srv, "bundle", "push", "north", str(settings), "--note", "night shift", "--user", "bob")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith("north v1 by bob (night shift): ")
    assert wait_until(lambda: _applied(agent, 1), timeout=20)
    assert agent.cfg.sampling.per_minute == 4 and agent.cfg.sampling.strategies[0].name == "entropy"
    settings.write_text("[sampling]\nper_minute = 9\n")
    assert cli(srv, "bundle", "push", "north", str(settings)).returncode == 0
    assert wait_until(lambda: _applied(agent, 2), timeout=20)
    back = cli(srv, "bundle", "rollback", "north")
    assert back.returncode == 0 and back.stdout.startswith("north v3 by ") and "(rollback to v1)" in back.stdout
    assert wait_until(lambda: _applied(agent, 3), timeout=20) and agent.cfg.sampling.per_minute == 4
    listing = cli(srv, "bundle", "list", "north", "--json")
    assert [b["version"] for b in json.loads(listing.stdout)] == [3, 2, 1]
    settings.write_text("[sampling]\nper_minute = -2\n")
    refused = cli(srv, "bundle", "push", "north", str(settings))
    assert refused.returncode == 1 and "422" in refused.stderr and "sampling.per_minute" in refused.stderr
    settings.write_text("[sampling\n")
    assert cli(srv, "bundle", "push", "north", str(settings)).returncode == 2
    groups = cli(srv, "groups")
    assert groups.returncode == 0 and "north: bundle v3; agent-1 (v3)" in groups.stdout


def test_without_the_broker_nothing_is_sent_or_stored(tmp_path, broker):
    key = keys.generate(tmp_path / "keys")
    with fleet_server(tmp_path, broker, key.private) as (srv, http):
        cfg = agent_config(tmp_path, broker, "agent-1", ["north"], [str(key.public)])
        with running(cfg):
            assert wait_until(lambda: reported(srv, "agent-1"), timeout=30)
        broker.kill()
        assert wait_until(lambda: not srv.service.fleet.link.client.is_connected(), timeout=20)
        r = http.post("/api/agents/agent-1/commands", json={"action": "ping"})
        assert r.status_code == 503 and "nothing was sent" in r.json()["detail"]
        r = http.post("/api/groups/north/bundles", json={"settings": NEW})
        assert r.status_code == 503 and "nothing changed" in r.json()["detail"]
        assert http.get("/api/commands").json() == [] and http.get("/api/groups/north/bundles").json() == []
        broker.start()
        assert wait_until(lambda: srv.service.fleet.link.client.is_connected(), timeout=30)
        pushed = http.post("/api/groups/north/bundles", json={"settings": NEW})
        assert pushed.status_code == 200 and pushed.json()["version"] == 1  # the failed push used no version


def test_an_agent_process_applies_a_bundle_and_answers_a_command(tmp_path, broker):
    """The agent as deployed: ``edgeloop agent --config`` in its own process."""
    key = keys.generate(tmp_path / "keys")
    with fleet_server(tmp_path, broker, key.private) as (srv, http):
        cfg = agent_config(tmp_path, broker, "agent-p", ["west"], [str(key.public)])
        proc = subprocess.Popen([sys.executable, "-m", "edgeloop", "agent", "--config", str(cfg), "--seed", "1"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_until(lambda: reported(srv, "agent-p"), timeout=60), proc.stderr
            assert http.post("/api/groups/west/bundles", json={"settings": NEW}).status_code == 200
            assert wait_until(lambda: _live(http, "agent-p").get("config_version") == 1, timeout=30)
            ping = http.post("/api/agents/agent-p/commands", json={"action": "ping"}).json()
            assert ping["state"] == "answered"
            assert (ping["answer"]["config_group"], ping["answer"]["config_version"]) == ("west", 1)
        finally:
            proc.terminate()
            proc.wait(30)
        assert json.loads((tmp_path / "agent-p" / "data" / "config-bundle.json").read_text())["signature"]


def test_reload_config_lays_the_bundle_over_the_new_file(tmp_path, broker):
    """No connection needed: the agent object is built, not started; the bundle is handed to it directly."""
    key = keys.generate(tmp_path / "keys")
    cfg = agent_config(tmp_path, broker, "agent-r", ["north"], [str(key.public)])
    agent = Agent(load_config(cfg), cfg)
    try:
        good = key.private.read_bytes()
        assert agent.bundles.receive(ConfigBundle(*_forged("north", 1, {"sampling": {"per_minute": 7}}, good)))
        cfg.write_text(cfg.read_text().replace("per_hour = 100000", "per_hour = 50"))
        agent.handle_command(Command("c-1", "reload_config", time.time()))
        assert (agent.cfg.sampling.per_minute, agent.cfg.sampling.per_hour) == (7, 50)
        assert agent.sampler.cfg.per_hour == 50 and agent.file_cfg.sampling.per_minute != 7
        status = agent.status("online")
        assert status.answered == ("c-1",) and status.config_version == 1
        assert agent.status("online").answered == ()  # answered once
    finally:
        agent.outbox.close()
