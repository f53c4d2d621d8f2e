"""The broker fixture is a real broker: messages, retained status, last will, kill and restart."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import paho.mqtt.client as mqtt
import pytest

import factories as fx
from mqtt_util import Recorder, publish
from protocol import decode, encode, topic_for
from protocol.topics import SAMPLES_FILTER, STATUS_FILTER, shared


def test_sample_through_real_broker(broker):
    rec = Recorder(broker.host, broker.port, [SAMPLES_FILTER])
    try:
        msg = fx.sample()
        publish(broker.host, broker.port, topic_for(msg), encode(msg))
        topic, payload, _ = rec.get()
        assert decode(topic, payload) == msg
    finally:
        rec.close()


AGENT = textwrap.dedent("""
    import sys, time
    import paho.mqtt.client as mqtt
    from protocol import Status, encode, topic_for
    host, port = sys.argv[1], int(sys.argv[2])
    offline = Status(agent_id="a1", state="offline", at=time.time())
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="a1")
    c.will_set(topic_for(offline), encode(offline), qos=1, retain=True)
    c.connect(host, port, keepalive=5)
    c.loop_start()
    online = Status(agent_id="a1", state="online", at=time.time())
    c.publish(topic_for(online), encode(online), qos=1, retain=True).wait_for_publish(5)
    print("online", flush=True)
    time.sleep(60)
""")


def test_last_will_marks_a_killed_agent_offline(broker):
    proc = subprocess.Popen([sys.executable, "-c", AGENT, broker.host, str(broker.port)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "online"
        rec = Recorder(broker.host, broker.port, [STATUS_FILTER])
        topic, payload, retained = rec.get()
        assert retained and decode(topic, payload).state == "online"
        proc.kill()  # no DISCONNECT: the broker must publish the will
        topic, payload, _ = rec.get(timeout=20)
        assert decode(topic, payload).state == "offline"
        rec.close()
        late = Recorder(broker.host, broker.port, [STATUS_FILTER])  # a newcomer sees the retained will
        assert decode(*late.get()[:2]).state == "offline"
        late.close()
    finally:
        proc.kill()
        proc.wait()


def test_kill_and_restart_on_same_port(broker):
    port = broker.port
    broker.kill()
    assert not broker.running
    with pytest.raises(OSError):
        mqtt.Client(mqtt.CallbackAPIVersion.VERSION2).connect(broker.host, port)
    broker.start()
    assert broker.port == port and broker.running
    publish(broker.host, port, "edgeloop/v1/agents/a1/telemetry", encode(fx.telemetry(agent_id="a1")), qos=0)


def test_shared_subscription_splits_samples(mqtt5_broker):
    b = mqtt5_broker
    recs = [Recorder(b.host, b.port, [shared(SAMPLES_FILTER)], client_id=f"collector-{i}", protocol=mqtt.MQTTv5)
            for i in range(2)]
    try:
        for n in range(20):
            msg = fx.sample(frame_id=f"cam-agent-1.gate.{n}")
            publish(b.host, b.port, topic_for(msg), encode(msg))
        got = []
        for rec in recs:
            while True:
                try:
                    got.append((rec, decode(*rec.get(timeout=2)[:2]).frame_id))
                except Exception:
                    break
        assert sorted(f for _, f in got) == sorted(f"cam-agent-1.gate.{n}" for n in range(20))
        assert all(any(r is rec for r, _ in got) for rec in recs), "both collectors should get a share"
    finally:
        for rec in recs:
            rec.close()
