"""The fleet side of the server: one MQTT client for commands, answers and bundles.

``FleetService.open(config, store)`` connects (asynchronously: the server
starts without a broker and paho keeps retrying) with the server's ``[mqtt]``
credentials under client id ``<mqtt.client_id>-fleet``, subscribes to every
agent's Status (retained ones arrive at once, so the live view below is full
right after a restart) and builds the ``Commander`` and ``Bundles``.
Bundles are signed with ``[publish] signing_key``; without it they are off
and the API says so.

Threads: paho's network thread delivers statuses (``_on_message``: decode,
remember, hand answers to the commander); everything else runs on callers'
threads.
"""

from __future__ import annotations

import logging
import threading
import time

from protocol import ProtocolError, Status, decode
from protocol.topics import STATUS_FILTER
from trainer.publish.mqttlink import MqttLink, MqttSettings

from .bundles import Bundles
from .commands import Commander

log = logging.getLogger(__name__)


class FleetService:
    def __init__(self, store, link: MqttLink, key=None, key_problem: str = "") -> None:
        self.store = store
        self.link = link
        self.commander = Commander(store, self._publish, link.client.is_connected)
        self.bundles = Bundles(store, self._publish_retained, key, key_problem)
        self._live: dict[str, dict] = {}  # agent id -> tags, config group and version from its last Status
        self._lock = threading.Lock()

    @classmethod
    def open(cls, config, store) -> "FleetService":
        """``config`` is the server's ServerConfig; ``store`` its Store."""
        m = config.mqtt
        settings = MqttSettings(host=m.host, port=m.port, client_id=f"{m.client_id}-fleet", username=m.username,
                                password=m.password.get_secret_value() if m.password else None,
                                keepalive=m.keepalive_s, tls=m.tls, ca_file=m.ca_file, cert_file=m.cert_file,
                                key_file=m.key_file, tls_insecure=m.tls_insecure)
        key, problem = None, ""
        if config.publish is not None:
            from trainer.publish.keys import KeyError_, load_signing_key

            try:
                key = load_signing_key(config.publish.signing_key)
            except (KeyError_, ProtocolError) as e:
                problem = str(e)
                log.error("configuration bundles are off: %s", e)
        link = MqttLink(settings, (STATUS_FILTER,), None)
        service = cls(store, link, key, problem)
        link._on_message = service._on_message
        link.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        link.client.loop_start()
        return service

    def close(self) -> None:
        self.link.stop()

    def _publish(self, topic: str, payload: bytes) -> None:
        self.link.publish(topic, payload, qos=1, timeout=10.0)

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        self.link.publish(topic, payload, retain=True, qos=1, timeout=10.0)

    def _on_message(self, topic: str, payload: bytes, _retained: bool) -> None:
        try:
            msg = decode(topic, payload)
        except ProtocolError as e:  # the collector dead-letters and counts it; here it is only skipped
            log.debug("fleet: skipped a bad message on %s: %s", topic, e)
            return
        if not isinstance(msg, Status):
            return
        with self._lock:
            self._live[msg.agent_id] = {"tags": dict(msg.tags), "config_group": msg.config_group,
                                        "config_version": msg.config_version, "status_detail": msg.detail,
                                        "seen": time.time()}
        self.commander.on_status(msg)  # a retained copy seen again changes nothing (records.record_answers)

    def live(self) -> dict[str, dict]:
        with self._lock:
            return {k: dict(v) for k, v in self._live.items()}
