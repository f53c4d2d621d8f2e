"""The collector against a real mosquitto: good frames stored once, bad ones dead-lettered, receipts after commit."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

import factories
import protocol
from mqtt_util import Recorder, wait_until
from protocol import envelope, topics
from trainer.server.config import ServerConfig
from trainer.server.metrics import prometheus_text
from trainer.server.service import Service

AGENT = "cam-agent-1"


def _config(broker, tmp_path: Path, **mqtt_changes) -> ServerConfig:
    return ServerConfig.model_validate({"mqtt": {"host": broker.host, "port": broker.port, "batch_ms": 20,
                                                 **mqtt_changes},
                                        "store": {"data_dir": str(tmp_path / "data")}})


def _publish_all(broker, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(20)
    finally:
        client.loop_stop()
        client.disconnect()


def _receipts(rec: Recorder, want_stored: int, want_rejected: int) -> tuple[set, dict]:
    stored, rejected = set(), {}
    while len(stored) < want_stored or len(rejected) < want_rejected:
        topic, payload, _ = rec.get(timeout=20)
        r = protocol.decode(topic, payload)
        stored.update(r.stored)
        rejected.update(dict(r.rejected))
    return stored, rejected


def _bad_payloads() -> list[tuple[str, bytes, str]]:
    topic = topics.sample_topic(AGENT, "gate")
    good = factories.sample(frame_id=f"{AGENT}.gate.wrongversion")
    wrong_version = bytearray(protocol.encode(good))
    wrong_version[2] = 2
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    not_jpeg = envelope.pack("sample", replace(factories.sample(frame_id=f"{AGENT}.gate.png")).header(), png)
    big_body = b"\xff\xd8\xff" + bytes(9 * 1024 * 1024)
    oversized = envelope.pack("sample", factories.sample(frame_id=f"{AGENT}.gate.big").header(), big_body)
    bad_header = envelope.PREFIX.pack(b"EL", 1, 0, 1, 0, 4) + b"\xc1\xc1\xc1\xc1"
    spoofed = protocol.encode(factories.sample(agent_id="someone-else", frame_id="someone-else.gate.1"))
    return [(topic, b"garbage", "truncated"), (topic, bytes(wrong_version), "unsupported_version"),
            (topic, not_jpeg, "not_jpeg"), (topic, oversized, "image_too_large"), (topic, bad_header, "bad_header"),
            (topic, spoofed, "topic_mismatch")]


@pytest.mark.parametrize("proto", ["5", "3.1.1"])
def test_good_frames_stored_bad_ones_dead_lettered(broker, tmp_path: Path, proto: str) -> None:
    if proto == "5" and not broker.supports_mqtt5:
        pytest.skip("needs mosquitto")
    svc = Service(_config(broker, tmp_path, protocol=proto)).start()
    rec = Recorder(broker.host, broker.port, [topics.receipt_topic(AGENT)])
    try:
        assert svc.collector.connected.wait(10) and svc.collector.mqtt5 == (proto == "5")
        good = [factories.sample(frame_id=f"{AGENT}.gate.{i:04d}", jpeg=factories.jpeg(seed=i)) for i in range(40)]
        bad = _bad_payloads()
        messages = [(protocol.topic_for(s), protocol.encode(s)) for s in good]
        for k, (t, p, _reason) in enumerate(bad):
            messages.insert(5 * k + 3, (t, p))
        messages += [(protocol.topic_for(factories.status()), protocol.encode(factories.status())),
                     (protocol.topic_for(factories.telemetry()), protocol.encode(factories.telemetry()))]
        _publish_all(broker, messages)
        stored, rejected = _receipts(rec, 40, 3)
        assert stored == {s.frame_id for s in good}
        # A frame whose header can be read is refused for good, so the agent stops resending it; a
        # future-major envelope cannot be read, so it is only dead-lettered.
        assert rejected == {f"{AGENT}.gate.png": "not_jpeg", f"{AGENT}.gate.big": "image_too_large",
                            "someone-else.gate.1": "topic_mismatch"}
        store = svc.store
        assert wait_until(lambda: sum(store.dead_letter_counts().values()) == len(bad))
        assert store.dead_letter_counts() == {reason: 1 for _t, _p, reason in bad}
        blobs = store.sample_blobs()
        assert {f: hashlib.sha256(s.jpeg).hexdigest() for f, s in ((s.frame_id, s) for s in good)} == blobs
        assert wait_until(lambda: store.fleet() and store.fleet()[0]["fps"] is not None)
        assert svc.metrics.get("dead_letters", "not_jpeg") == 1
        assert svc.metrics.get("ingest_stored") == 40
        text = prometheus_text(svc.metrics, store.dead_letter_counts(), store.queue_depth(), store.count())
        assert 'edgeloop_dead_letters_total{reason="image_too_large"} 1' in text
        assert 'edgeloop_dead_letters_stored{reason="bad_header"} 1' in text
        assert "edgeloop_queue_depth 40" in text and "edgeloop_ingest_stored_total 40" in text
    finally:
        rec.close()
        svc.stop()


def test_redelivered_frames_are_receipted_again_but_stored_once(mqtt5_broker, tmp_path: Path) -> None:
    svc = Service(_config(mqtt5_broker, tmp_path)).start()
    rec = Recorder(mqtt5_broker.host, mqtt5_broker.port, [topics.receipt_topic(AGENT)])
    try:
        assert svc.collector.connected.wait(10)
        frames = [factories.sample(frame_id=f"{AGENT}.gate.{i}", jpeg=factories.jpeg(seed=i)) for i in range(5)]
        msgs = [(protocol.topic_for(s), protocol.encode(s)) for s in frames]
        _publish_all(mqtt5_broker, msgs)
        assert _receipts(rec, 5, 0)[0] == {s.frame_id for s in frames}
        _publish_all(mqtt5_broker, msgs)  # an agent that never saw the receipts resends
        assert _receipts(rec, 5, 0)[0] == {s.frame_id for s in frames}
        assert svc.store.count() == 5
        assert svc.store.counters()["ingest_duplicates"] == 5
    finally:
        rec.close()
        svc.stop()


def test_two_collectors_share_the_load(mqtt5_broker, tmp_path: Path) -> None:
    """MQTT 5 shared subscription: two collector processes' worth of clients, one data dir, each frame once."""
    services = [Service(_config(mqtt5_broker, tmp_path, client_id=f"collector-{i}", shared_group="collectors",
                                protocol="5")).start() for i in range(2)]
    rec = Recorder(mqtt5_broker.host, mqtt5_broker.port, [topics.receipt_topic(AGENT)])
    try:
        assert all(s.collector.connected.wait(10) for s in services)
        frames = [factories.sample(frame_id=f"{AGENT}.gate.{i:04d}", jpeg=factories.jpeg(seed=i)) for i in range(200)]
        _publish_all(mqtt5_broker, [(protocol.topic_for(s), protocol.encode(s)) for s in frames])
        assert _receipts(rec, 200, 0)[0] == {s.frame_id for s in frames}
        shares = [s.metrics.get("ingest_stored") for s in services]
        assert sum(shares) == 200 and all(n > 0 for n in shares), shares
        assert services[0].store.count() == 200
    finally:
        rec.close()
        for s in services:
            s.stop()
