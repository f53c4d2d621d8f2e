"""Enrolling agents on the production broker: the scripts, the documented
client-certificate mode, and the real agent and server run from
deploy/examples/{agent,server}.toml through it.

Uses the broker and clients of test_deploy_mosquitto.py (this module gets its
own broker from the same fixture).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.request

import factories
from edgeloop.broker import free_port, wait_port
from mqtt_util import wait_until
from protocol import decode, encode
from protocol.topics import ID_RE, SAMPLES_FILTER, receipt_topic, sample_topic, shared, status_topic
from test_deploy_mosquitto import (NOT_AUTHORIZED, PASSWORDS, REFUSED, ROOT, SERVER_USER, Broker, Peer,  # noqa: F401
                                   _require_tools, add_credentials, connected, peers, prod_broker,
                                   sample_payload, topics)


def test_client_certificate_mode_confines_agents_by_their_cn(tmp_path):
    """require_certificate + use_identity_as_username: the CN stands in for the username in the %u patterns."""
    mosquitto, _ = _require_tools()
    broker = Broker(tmp_path / "cert-broker", mosquitto, client_certs=True)
    opened: list[Peer] = []
    try:
        def peer(**kwargs) -> Peer:
            opened.append(Peer(broker, None, port=broker.agent_port, **kwargs))
            return opened[-1]

        cam1 = peer(cert="cam-1")
        assert cam1.connect() == 0
        assert cam1.subscribe(receipt_topic("cam-1")) == [1]
        assert cam1.publish(sample_topic("cam-2", "gate"), sample_payload("cam-2", "gate", 1)) == NOT_AUTHORIZED
        assert cam1.publish(sample_topic("cam-1", "gate"), sample_payload("cam-1", "gate", 1)) == 0
        server = Peer(broker, SERVER_USER)
        opened.append(server)
        assert server.connect() == 0
        assert server.publish(receipt_topic("cam-1"), encode(factories.receipt())) == 0
        assert receipt_topic("cam-1") in topics(cam1.until(receipt_topic("cam-1")))
        # No certificate, no connection, whatever the password.
        without = peer()
        without.client.username_pw_set("cam-1", PASSWORDS["cam-1"])
        assert without.connect() is None
    finally:
        for p in opened:
            p.close()
        broker.stop()


def test_enrolling_an_agent_takes_effect_on_reload(peers, prod_broker):
    result = add_credentials("agent", prod_broker.passwd, "cam-enrolled")
    assert result.returncode == 0, result.stderr
    password = result.stdout.strip()
    assert result.stdout == password + "\n" and len(password) >= 32, "stdout must be the password alone"
    assert password not in result.stderr
    again = add_credentials("agent", prod_broker.passwd, "cam-enrolled")
    assert again.returncode != 0 and "already has credentials" in again.stderr
    assert prod_broker.passwd.read_text().count("cam-enrolled:") == 1
    assert prod_broker.passwd.stat().st_mode & 0o077 == 0, "the password file must not be readable by others"

    assert peers("cam-enrolled", password=password).connect() in REFUSED  # not before the reload
    prod_broker.reload()
    assert wait_until(lambda: peers("cam-enrolled", password=password).connect() == 0), "not accepted after SIGHUP"
    agent = connected(peers, "cam-enrolled", password=password)
    assert agent.publish(sample_topic("cam-enrolled", "gate"), sample_payload("cam-enrolled", "gate", 1)) == 0
    assert agent.publish(sample_topic("cam-1", "gate"), sample_payload("cam-1", "gate", 9)) == NOT_AUTHORIZED


def test_the_example_agent_config_runs_the_real_agent_through_this_broker(peers, prod_broker, tmp_path):
    """deploy/examples/agent.toml with only addresses and paths swapped: TLS, its agent id as username, the ACL."""
    import agent_helpers  # onnx: imported here so the other tests do not need it
    from protocol.manifest import generate_keypair

    cfg = tomllib.loads((ROOT / "deploy" / "examples" / "agent.toml").read_text())
    agent_id = cfg["agent_id"]
    enrolled = add_credentials("agent", prod_broker.passwd, agent_id)
    assert enrolled.returncode == 0, enrolled.stderr
    prod_broker.reload()
    (tmp_path / "signing_key.pub.pem").write_bytes(generate_keypair()[1])
    cfg["data_dir"] = str(tmp_path / "data")
    cfg["mqtt"] |= {"host": "127.0.0.1", "port": prod_broker.agent_port, "ca_file": str(prod_broker.pki["ca.crt"]),
                    "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    cfg["model"]["path"] = str(agent_helpers.make_classifier(tmp_path / "model.onnx", name=cfg["model"]["name"]))
    cfg["cameras"] = [{"id": "gate", "source": "synthetic", "on_eof": "stop",
                       "synthetic": {"seed": 1, "width": 96, "height": 72, "frames": 24}}]
    cfg["sampling"] = {"strategies": [{"name": "least_confidence", "threshold": 0.0}], "dedup_hamming": 0,
                       "per_minute": 1000, "per_hour": 1000, "per_day": 1000, "class_share": 1.0, "seed": 1}
    cfg["uplink"] = {"receipt_timeout_s": 3.0}
    cfg["updates"]["trusted_key_files"] = [str(tmp_path / "signing_key.pub.pem")]
    config = agent_helpers.write_config(tmp_path / "agent.toml", cfg)

    server = connected(peers, SERVER_USER)

    def collect(client, userdata, msg) -> None:  # a collector: store, then send the receipt
        server.messages.put(msg)
        if "/samples/" in msg.topic:
            sample = decode(msg.topic, msg.payload)
            client.publish(receipt_topic(sample.agent_id), encode(factories.receipt(
                stored=(sample.frame_id,), rejected=())), qos=1)

    server.client.on_message = collect
    assert server.subscribe(shared(SAMPLES_FILTER), status_topic(agent_id)) == [1, 1]
    env = {**os.environ, cfg["mqtt"]["password_env"]: enrolled.stdout.strip()}
    run = subprocess.run([sys.executable, "-m", "edgeloop", "agent", "--config", str(config), "--exit-when-done",
                          "--drain-timeout", "20"], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    got = []
    while not server.messages.empty():
        got.append(server.messages.get_nowait())
    samples = [m for m in got if "/samples/" in m.topic]
    assert samples and {m.topic for m in samples} == {sample_topic(agent_id, "gate")}
    assert re.search(r"picked (\d+), delivered \1, evicted 0, pending 0", run.stderr), run.stderr[-2000:]
    states = [decode(m.topic, m.payload).state for m in got if m.topic == status_topic(agent_id)]
    assert "online" in states, "the agent's retained status did not pass the ACL"


def test_the_example_server_config_runs_the_real_server_through_this_broker(peers, prod_broker, tmp_path):
    """deploy/examples/server.toml with only addresses and paths swapped: its user (collector and publisher),
    the TLS server listener (the broker's certificate checked against the CA), the ACL, the password from the
    environment as in server.env."""
    import agent_helpers
    from trainer.publish.keys import generate
    from trainer.server.config import MQTT_PASSWORD_ENV, TOKEN_ENV

    cfg = tomllib.loads((ROOT / "deploy" / "examples" / "server.toml").read_text())
    assert cfg["mqtt"]["username"] == SERVER_USER and cfg["publish"]["mqtt_username"] == SERVER_USER
    env = {**os.environ, TOKEN_ENV: "a-token-for-the-deploy-tests", MQTT_PASSWORD_ENV: PASSWORDS[SERVER_USER]}
    http_port = free_port()
    assert cfg["mqtt"]["tls"] and cfg["publish"]["mqtt_tls"], "the server must reach the broker over TLS"
    cfg["mqtt"]["port"] = cfg["publish"]["mqtt_port"] = prod_broker.server_port
    cfg["mqtt"]["ca_file"] = cfg["publish"]["mqtt_ca_file"] = str(prod_broker.pki["ca.crt"])
    cfg["http"] |= {"host": "127.0.0.1", "port": http_port}
    cfg["store"]["data_dir"] = str(tmp_path / "data")
    cfg["publish"]["signing_key"] = str(generate(tmp_path / "keys").private)
    config = agent_helpers.write_config(tmp_path / "server.toml", cfg)
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "edgeloop", "server", "--config", str(config)], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", http_port, timeout=60)

        def broker_connected() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as r:
                return json.load(r).get("mqtt_connected") is True

        assert wait_until(broker_connected, timeout=30), (tmp_path / "server.log").read_text()[-2000:]
        agent = connected(peers, "cam-1")
        assert agent.subscribe(receipt_topic("cam-1")) == [1]
        assert agent.publish(sample_topic("cam-1", "gate"), sample_payload("cam-1", "gate", 77)) == 0
        receipt = agent.until(receipt_topic("cam-1"))[-1]
        assert decode(receipt.topic, receipt.payload).stored == ("cam-1.gate.000077",)
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
    finally:
        server.terminate()
        server.wait(30)
        log.close()


IDS = ["a", "cam-1", "A.b_c-9", "0", "x" * 64, "", "-cam", ".cam", "_cam", "x" * 65, "cam/1", "cam+1", "cam#1",
       "cam 1", "cam:1", "câm", "cam\u0661", "cam\n", "cam\t1", SERVER_USER, "$SYS", "cam*"]


def test_add_agent_accepts_exactly_the_protocol_ids(tmp_path):
    _require_tools()
    for i, agent_id in enumerate(IDS):
        result = add_credentials("agent", tmp_path / f"passwd{i}", agent_id, "a-password-for-tests")
        expected = ID_RE.fullmatch(agent_id) is not None
        assert (result.returncode == 0) == expected, f"{agent_id!r}: {result.stderr}"
