"""A small paho client for the publishing side: retained QoS 1 announcements, fleet health.

paho's network thread reconnects on its own; subscriptions are renewed on
every connect because the session is clean. ``secure`` is the one place a
server-side paho client (this link, the collector, the fleet service) gets its
TLS settings: the broker's certificate is always verified against ``ca_file``
(or the system's CAs), a client certificate is optional.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Callable

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

OnMessage = Callable[[str, bytes, bool], None]  # topic, payload, retained


class MqttError(Exception):
    """The broker did not accept a connection, subscription or publish in time."""


class NotSent(MqttError):
    """Not connected: nothing was handed to the broker (safe to treat as never delivered)."""


class Unacknowledged(MqttError):
    """Sent (or queued) but not acknowledged in time: the broker may have it; treat it as perhaps delivered."""


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None  # a client certificate, when the broker listener asks for one
    key_file: str | None = None
    tls_insecure: bool = False  # skip the host name check (the chain is still verified): lab use only
    keepalive: int = 30


def secure(client: mqtt.Client, *, tls: bool, username: str | None, password: str | None,
           ca_file: object = None, cert_file: object = None, key_file: object = None,
           tls_insecure: bool = False) -> None:
    """Credentials and TLS for a paho client (before connect); MqttError naming the files when one is unusable."""
    if username:
        client.username_pw_set(username, password)
    if tls:
        try:
            client.tls_set(ca_certs=str(ca_file) if ca_file else None, certfile=str(cert_file) if cert_file else None,
                           keyfile=str(key_file) if key_file else None, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError) as e:  # paho's own message names no file
            raise MqttError(f"cannot use the TLS files for the broker (ca_file={ca_file}, cert_file={cert_file}, "
                            f"key_file={key_file}): {e}") from e
        client.tls_insecure_set(tls_insecure)


class MqttLink:
    def __init__(self, settings: MqttSettings, subscriptions: tuple[str, ...] = (),
                 on_message: OnMessage | None = None) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        self._on_message = on_message
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id)
        secure(c, tls=settings.tls, username=settings.username, password=settings.password,
               ca_file=settings.ca_file, cert_file=settings.cert_file, key_file=settings.key_file,
               tls_insecure=settings.tls_insecure)
        c.reconnect_delay_set(0.2, 10)
        c.on_connect = self._connected_cb
        c.on_disconnect = lambda *_a: self._connected.clear()
        c.on_subscribe = lambda *_a: self._subscribed.set()
        c.on_message = self._message_cb
        self.client = c

    def _connected_cb(self, client, _userdata, _flags, reason_code, _props) -> None:
        if reason_code.is_failure:
            log.error("MQTT connection refused: %s", reason_code)
            return
        try:
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        if self.subscriptions:
            client.subscribe([(t, 1) for t in self.subscriptions])
        else:
            self._subscribed.set()
        self._connected.set()

    def _message_cb(self, _client, _userdata, msg) -> None:
        if self._on_message is None:
            return
        try:
            self._on_message(msg.topic, msg.payload, bool(msg.retain))
        except Exception:  # a bad message must not kill paho's network thread
            log.exception("handling a message on %s failed", msg.topic)

    def start(self, timeout: float = 10.0) -> "MqttLink":
        s = self.settings
        try:
            self.client.connect(s.host, s.port, keepalive=s.keepalive)
        except OSError as e:
            raise MqttError(f"cannot connect to MQTT broker {s.host}:{s.port}: {e}") from e
        self.client.loop_start()
        if not (self._connected.wait(timeout) and self._subscribed.wait(timeout)):
            self.stop()
            raise MqttError(f"MQTT broker {s.host}:{s.port} did not accept the connection in {timeout:.0f}s")
        return self

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1,
                timeout: float = 10.0) -> None:
        """Publish and wait for the broker's acknowledgement (PUBACK for QoS 1).

        Never queued for later: while disconnected it raises ``NotSent`` without handing paho anything
        (paho would keep a QoS 1 message and send it after reconnecting, long after the caller was told
        it failed). A publish not acknowledged in time is taken out of paho's queue as far as paho still
        holds it, and raises ``Unacknowledged``: the broker may have it already, so the caller must treat
        it as perhaps delivered (a bundle version is never reused; commands carry an expiry).
        """
        if not self.client.is_connected():
            raise NotSent(f"not connected to the MQTT broker: nothing was sent to {topic}")
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:  # the connection dropped between the check and the call
            self._forget(info.mid)
            raise NotSent(f"not connected to the MQTT broker: nothing was sent to {topic}")
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as e:
            self._forget(info.mid)
            raise Unacknowledged(f"publish to {topic} failed: {e}") from e
        if not info.is_published():
            self._forget(info.mid)
            raise Unacknowledged(f"broker did not acknowledge the publish to {topic} within {timeout:.0f}s")

    def _forget(self, mid: int) -> None:
        """Drop an unacknowledged message from paho's outgoing queue so no reconnect resends it."""
        try:  # paho keeps it here (2.x); without that attribute there is nothing more we can do
            with self.client._out_message_mutex:
                self.client._out_messages.pop(mid, None)
        except AttributeError:
            log.warning("could not drop message %d from paho's queue: it may still be sent after a reconnect", mid)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
