"""Small helpers for tests that talk to the broker fixture with paho."""

from __future__ import annotations

import queue
import threading
import time

import paho.mqtt.client as mqtt


class Recorder:
    """A paho client that records every message on its subscriptions."""

    def __init__(self, host: str, port: int, topics: list[str], client_id: str = "", protocol=mqtt.MQTTv311):
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.retain))
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("subscription not acknowledged")

    def get(self, timeout: float = 10.0) -> tuple[str, bytes, bool]:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publish(host: str, port: int, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(host, port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
