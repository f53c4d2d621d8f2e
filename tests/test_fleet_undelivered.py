"""What the server answered 503 for never runs later: real broker stopped, paused and restarted.

- a publish while disconnected hands paho nothing (paho would queue a QoS 1 message and send it after
  the reconnect, long after the caller was told it failed);
- a bundle the broker did not acknowledge in time may still arrive, so its version is never reused:
  the next push is higher and agents accept it (before, the next push reused the version and every
  agent that had received the lost one refused it as not newer: the group was stuck);
- a command carries ``expires_at`` and an agent refuses it once past.
"""

from __future__ import annotations

import os
import signal
import time

import paho.mqtt.client as mqtt
import pytest

from mqtt_util import wait_until
from protocol import Command, ConfigBundle, decode, encode
from protocol.bundle import parse_bundle
from protocol.topics import config_topic
from trainer.fleet.bundles import BundleError, Bundles
from trainer.publish import keys
from trainer.publish.mqttlink import MqttLink, MqttSettings, NotSent, Unacknowledged
from trainer.store import Store

pytestmark = pytest.mark.timeout(120)
SETTINGS = {"sampling": {"per_minute": 7}}


class Watcher:
    """A plain subscriber: the config bundle versions and payloads delivered on a topic, in order."""

    def __init__(self, broker, topic: str) -> None:
        self.got: list[bytes] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{time.monotonic_ns()}")
        self.client.on_message = lambda _c, _u, m: self.got.append(m.payload)
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def versions(self, topic: str) -> list[int]:
        return [parse_bundle(decode(topic, p).bundle).version for p in self.got]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def link(broker):
    link = MqttLink(MqttSettings(host=broker.host, port=broker.port, client_id="undelivered-test")).start()
    yield link
    link.stop()


def test_a_publish_while_disconnected_is_never_sent_later(broker, link) -> None:
    watcher = Watcher(broker, "edgeloop/v1/agents/+/commands")
    try:
        broker.kill()
        assert wait_until(lambda: not link.client.is_connected(), timeout=20)
        ghost = encode(Command("c-ghost", "rollback", time.time()))
        with pytest.raises(NotSent):
            link.publish("edgeloop/v1/agents/a1/commands", ghost, timeout=1)
        broker.start()
        assert wait_until(link.client.is_connected, timeout=30)
        assert wait_until(lambda: watcher.client.is_connected(), timeout=30)
        time.sleep(0.5)  # the watcher's subscription (renewed on connect) is in place
        marker = encode(Command("c-marker", "ping", time.time()))
        link.publish("edgeloop/v1/agents/a1/commands", marker, timeout=10)
        assert wait_until(lambda: marker in watcher.got, timeout=20)
        assert ghost not in watcher.got  # queued messages go out first on a reconnect: it would be here
    finally:
        watcher.close()


def test_an_unacknowledged_bundle_version_is_never_reused(tmp_path, broker, link) -> None:
    key = keys.load_signing_key(keys.generate(tmp_path / "keys").private)
    store = Store(tmp_path / "data")
    topic = config_topic("north")
    watcher = Watcher(broker, topic)
    bundles = Bundles(store, lambda t, p: link.publish(t, p, retain=True, qos=1, timeout=1.0), key)
    try:
        assert wait_until(watcher.client.is_connected, timeout=20)
        time.sleep(0.5)
        assert bundles.push("north", SETTINGS, "ops")["version"] == 1
        os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker stops answering: the PUBACK never comes
        try:
            with pytest.raises(BundleError) as refused:
                bundles.push("north", {"sampling": {"per_minute": 8}}, "ops")
            assert refused.value.status == 503 and "v3" in refused.value.detail
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        # the lost v2 may still reach agents (it was on the wire); the next push must be above it
        assert bundles.push("north", {"sampling": {"per_minute": 9}}, "ops")["version"] == 3
        assert wait_until(lambda: watcher.versions(topic)[-1:] == [3], timeout=20)
        assert [b["version"] for b in bundles.versions("north")] == [3, 1]
    finally:
        watcher.close()
        store.close()


def test_agents_refuse_an_expired_command() -> None:
    now = time.time()
    fresh = Command("c-1", "ping", now, expires_at=now + 600)
    late = decode("edgeloop/v1/agents/a1/commands", encode(Command("c-2", "rollback", now - 900, expires_at=now - 300)))
    assert isinstance(late, Command) and late.expires_at == now - 300
    assert not fresh.expired(now) and late.expired(now)
    old_server = decode("edgeloop/v1/agents/a1/commands", encode(Command("c-3", "ping", now - 10**6)))
    assert old_server.expires_at == 0 and not old_server.expired(now)  # minor 2 senders: no expiry
