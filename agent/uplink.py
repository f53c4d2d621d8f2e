"""The uplink: one thread owns the MQTT connection and drains the outbox.

A frame leaves the outbox only when the collector's Receipt names it (not on
the broker's PUBACK: the broker may die before the collector stored it). A
frame in flight without a receipt after ``receipt_timeout_s`` is sent again;
the collector deduplicates by frame id. After a lost connection everything in
flight is sent again on the next one.

Each connection uses a fresh paho client, so a dead session's queue is never
replayed on top of ours, and reconnects wait a capped, jittered backoff.
Presence: a retained ``online`` Status on every connect, and a retained
``offline`` Status as last will (and on a clean stop).
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt

from protocol import Announcement, Command, ConfigBundle, ProtocolError, Receipt, Status, Telemetry, decode, encode
from protocol.topics import announce_topic, command_topic, config_topic, receipt_topic, status_topic, telemetry_topic

from .backoff import Backoff
from .config import AgentConfig, mqtt_password
from .metrics import Counters
from .outbox import Outbox

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.2  # how often an idle uplink looks at the outbox without being notified


class Uplink:
    def __init__(self, cfg: AgentConfig, outbox: Outbox, counters: Counters, rng: random.Random,
                 status: Callable[[str], Status], telemetry: Callable[[], Telemetry],
                 on_command: Callable[[Command], None], on_announcement: Callable[[Announcement], None],
                 on_config: Callable[[ConfigBundle], None] | None = None) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.counters = counters
        self.backoff = Backoff(cfg.mqtt.reconnect_min_s, cfg.mqtt.reconnect_max_s, rng)
        self.status = status
        self.telemetry = telemetry
        self.on_command = on_command
        self.on_announcement = on_announcement
        self.on_config = on_config  # bundles of cfg.bundle_group (agent.bundles); None: not subscribed
        self.connected = threading.Event()
        self.connections = 0  # successful connects since start
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._status_due = threading.Event()
        self._resend = threading.Event()
        self._inflight: dict[str, float] = {}  # frame id -> monotonic send time
        self._acking: set[str] = set()  # receipted, delete not committed yet: do not resend
        self._last_telemetry = 0.0
        self._last_poll = 0.0
        self._client: mqtt.Client | None = None
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)

    # -- control -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def notify(self) -> None:
        """A frame was added to the outbox."""
        self._wake.set()

    def publish_status(self) -> None:
        self._status_due.set()
        self._wake.set()

    def resend_all(self) -> None:
        """Forget what is in flight, so every pending frame goes out again now."""
        self._resend.set()
        self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- connection ------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        client_id = m.client_id or f"edgeloop-agent-{self.cfg.agent_id}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                             clean_session=True)
        client.max_inflight_messages_set(self.cfg.uplink.max_inflight)
        if m.username is not None:
            client.username_pw_set(m.username, mqtt_password(m))
        if m.tls:
            client.tls_set(ca_certs=str(m.ca_file) if m.ca_file else None,
                           certfile=str(m.cert_file) if m.cert_file else None,
                           keyfile=str(m.key_file) if m.key_file else None, cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(m.tls_insecure)
        client.will_set(status_topic(self.cfg.agent_id), encode(self.status("offline")), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            self.counters.add("mqtt_refused")
            return
        try:
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # TLS sockets may not expose it; latency only
        subs = [(receipt_topic(self.cfg.agent_id), 1), (command_topic(self.cfg.agent_id), 1)]
        if self.cfg.updates.enabled:
            subs.append((announce_topic(self.cfg.model.name), 1))
        if self.on_config is not None and self.cfg.bundle_group is not None:
            subs.append((config_topic(self.cfg.bundle_group), 1))
        client.subscribe(subs)
        self.connections += 1
        self.backoff.reset()
        self.connected.set()
        self._status_due.set()
        log.info("connected to %s:%d", self.cfg.mqtt.host, self.cfg.mqtt.port)

    def _run(self) -> None:
        while not self._stop.is_set():
            client = self._make_client()
            self._client = client
            try:
                client.connect(self.cfg.mqtt.host, self.cfg.mqtt.port, self.cfg.mqtt.keepalive_s)
            except (OSError, ssl.SSLError, ValueError) as e:
                delay = self.backoff.next()
                log.warning("cannot connect to %s:%d (%s); retrying in %.1fs", self.cfg.mqtt.host,
                            self.cfg.mqtt.port, e, delay)
                self._stop.wait(delay)
                continue
            self._session(client)
            if self.connected.is_set() and not self._stop.is_set():
                log.warning("lost the broker connection; %d frame(s) in flight will be resent", len(self._inflight))
            self.connected.clear()
            self._inflight.clear()
            if not self._stop.is_set():
                self._stop.wait(self.backoff.next())
        self._client = None

    def _session(self, client: mqtt.Client) -> None:
        while not self._stop.is_set():
            rc = client.loop(timeout=0.05)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return
            if self.connected.is_set():
                try:
                    self._work(client)
                except Exception:  # a bug here must not kill the uplink thread
                    log.exception("uplink step failed")
                    self.counters.add("uplink_error")
        if self.connected.is_set():  # clean stop: say offline ourselves, the will only fires on a crash
            info = client.publish(status_topic(self.cfg.agent_id), encode(self.status("offline")), qos=1, retain=True)
            deadline = time.monotonic() + 2.0
            while not info.is_published() and time.monotonic() < deadline:
                client.loop(timeout=0.05)
            client.disconnect()

    # -- work on a live connection -----------------------------------------------

    def _work(self, client: mqtt.Client) -> None:
        now = time.monotonic()
        if self._status_due.is_set():
            self._status_due.clear()
            client.publish(status_topic(self.cfg.agent_id), encode(self.status("online")), qos=1, retain=True)
        if now - self._last_telemetry >= self.cfg.uplink.telemetry_period_s:
            self._last_telemetry = now
            client.publish(telemetry_topic(self.cfg.agent_id), encode(self.telemetry()), qos=0)
        self._send_due(client, now)

    def _send_due(self, client: mqtt.Client, now: float) -> None:
        timeout = self.cfg.uplink.receipt_timeout_s
        if self._resend.is_set():
            self._resend.clear()
            self._inflight.clear()
        expired = [fid for fid, sent in self._inflight.items() if now - sent > timeout]
        for fid in expired:
            del self._inflight[fid]
        if expired:
            self.counters.add("resent", len(expired))
            log.info("no receipt for %d frame(s) after %.0fs: sending again", len(expired), timeout)
        room = self.cfg.uplink.max_inflight - len(self._inflight)
        if room <= 0 or not (self._wake.is_set() or expired or now - self._last_poll >= IDLE_POLL_S):
            return
        self._wake.clear()
        self._last_poll = now
        for item in self.outbox.due(room, frozenset(self._inflight) | frozenset(self._acking)):
            info = client.publish(item.topic, item.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return
            self._inflight[item.frame_id] = now

    def _on_message(self, client: mqtt.Client, userdata, msg: mqtt.MQTTMessage) -> None:
        try:
            message = decode(msg.topic, msg.payload)
        except ProtocolError as e:
            log.warning("ignored a bad message on %s: %s", msg.topic, e)
            self.counters.add("bad_message")
            return
        if isinstance(message, Receipt):
            ids = list(message.stored) + [fid for fid, _ in message.rejected]
            for fid, why in message.rejected:
                log.warning("collector rejected frame %s for good: %s", fid, why)
            for fid in ids:
                self._inflight.pop(fid, None)
            self._acking.update(ids)
            fut = self.outbox.ack(message.stored, [fid for fid, _ in message.rejected])
            fut.add_done_callback(lambda _f: self._acking.difference_update(ids))
            self._wake.set()
        elif isinstance(message, Command):
            self.on_command(message)
        elif isinstance(message, Announcement):
            self.on_announcement(message)
        elif isinstance(message, ConfigBundle) and self.on_config is not None:
            self.on_config(message)
        else:
            log.warning("unexpected %s message on %s", message.KIND, msg.topic)
