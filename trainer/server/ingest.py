"""The collector: MQTT in, durable store, receipts out, then MQTT acks.

Order per batch: decode -> one SQLite commit (images and metadata) ->
receipts published -> PUBACKs sent. The broker keeps every message we have
not acknowledged (persistent session, fixed client id), so a collector
killed at any point gets them again on reconnect; frame_id dedup makes the
second copy harmless.

Threads: paho's network thread (``_on_message``) queues what arrives, and waits while
``mqtt.max_inflight_bytes`` of payload are held (``ByteBudget``); the batching thread decodes and
submits; the finishing thread waits for the commit, frees the bytes, sends receipts and acks.

A failed commit is retried (disk full, connection lost) unless the store refused the data itself
(an integrity or data error, the same every time): then the batch is written again one message per
transaction, and the message the store refuses becomes a ``store_refused`` dead letter (a rejected
receipt for a sample) while the rest are stored. ``stuck_for`` tells /healthz how long the oldest
uncommitted batch has waited.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import protocol
from protocol import envelope, topics
from protocol.messages import MAX_IDS_PER_RECEIPT
from trainer.store import DeadLetter, IncomingSample, Store, incoming
from trainer.store.records import IngestResult

from .config import MqttConfig
from .metrics import Metrics

log = logging.getLogger(__name__)
RETRY_S = (0.1, 0.5, 1.0, 2.0, 5.0)
PIPELINE_DEPTH = 2  # batches committing while the next is decoded
UNSUPPORTED_PROTOCOL_VERSION = 0x84  # MQTT 5 CONNACK reason code
STUCK_COMMIT_S = 60.0  # /healthz says not ok once the oldest uncommitted batch has waited this long


class _Stopping(Exception):
    """The collector is stopping while a commit is being retried: ack nothing."""


def _refused_by_store(exc: BaseException) -> bool:
    """Whether a failed write is the store refusing this data (the same on every retry), not an outage."""
    kinds: list[type] = []
    import sqlite3  # noqa: PLC0415 (both drivers looked up here only: psycopg may be absent)

    kinds += [sqlite3.IntegrityError, sqlite3.DataError]
    try:
        import psycopg  # noqa: PLC0415
        kinds += [psycopg.IntegrityError, psycopg.DataError]
    except ImportError:
        pass
    seen = 0
    while exc is not None and seen < 5:  # a wrapped driver error counts too
        if isinstance(exc, tuple(kinds)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class ByteBudget:
    """Payload bytes the collector holds between receipt and commit, bounded.

    ``take`` runs on paho's network thread and waits while the budget is spent, so the socket is not
    read and TCP plus the broker hold the rest; ``give`` runs on the finishing thread once a batch is
    committed (it never needs the network thread, so the wait cannot deadlock). A single message
    larger than the whole budget is let in when nothing else is held.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self.waits = 0
        self.waiting = False
        self._cond = threading.Condition()

    def take(self, n: int, stop: threading.Event) -> None:
        with self._cond:
            if self.held and self.held + n > self.limit:
                self.waits += 1
            while self.held and self.held + n > self.limit and not stop.is_set():
                self.waiting = True
                self._cond.wait(0.5)  # wakes for stop too; keepalive pings wait meanwhile (commits are short)
            self.waiting = False
            self.held += n
            self.peak = max(self.peak, self.held)

    def give(self, n: int) -> None:
        with self._cond:
            self.held -= n
            self._cond.notify_all()


@dataclass(frozen=True)
class Raw:
    topic: str
    payload: bytes
    mid: int
    qos: int


@dataclass
class _Batch:
    samples: dict  # (agent_id, frame_id) -> (Sample, list of Raw)
    fleet_status: list
    fleet_telemetry: list
    dead: list  # DeadLetter
    rejected: dict  # agent_id -> [(frame_id, reason)]
    acks: list  # Raw


def probe_mqtt5(cfg: MqttConfig, timeout: float = 3.0) -> bool:
    """Whether the broker speaks MQTT 5 (amqtt, for one, does not)."""
    result: list = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    cfg.secure(client)  # credentials and TLS, as the collector itself will connect
    client.on_connect = lambda c, u, f, rc, p: result.append(rc)
    try:
        client.connect(cfg.host, cfg.port, keepalive=10)
        deadline = time.monotonic() + timeout
        while not result and time.monotonic() < deadline:
            if client.loop(0.1) != mqtt.MQTT_ERR_SUCCESS:
                break
        client.disconnect()
    except (OSError, ValueError):
        return True  # unreachable now: assume a modern broker and let paho keep retrying
    if not result:
        return False  # the broker hung up on an MQTT 5 CONNECT
    # Refused for another reason (credentials): it does speak 5; the real client will report the refusal.
    return getattr(result[0], "value", result[0]) != UNSUPPORTED_PROTOCOL_VERSION


def _rejected_frame(topic: str, payload: bytes) -> tuple[str, str] | None:
    """(agent_id, frame_id) of a bad sample when both can be read, so the agent can stop resending it."""
    try:
        where = topics.parse_topic(topic)
        _kind, header, _body = envelope.unpack(payload)
    except protocol.ProtocolError:
        return None
    frame_id = header.get("frame_id")
    if where.kind != "sample" or not isinstance(frame_id, str) or not topics.FRAME_ID_RE.match(frame_id):
        return None
    return where.agent_id, frame_id


class Collector:
    """Owns one paho client and the batching thread that feeds the store."""

    def __init__(self, store: Store, config: MqttConfig, metrics: Metrics, meter=None) -> None:
        self.store = store
        # trainer.store.retention.StorageMeter: over its hard limit samples are refused for now (store_full).
        self.meter = meter
        self._full_logged = 0.0
        self.cfg = config
        self.metrics = metrics
        self._inbox: queue.Queue[Raw] = queue.Queue()  # bounded in bytes by ``budget``
        self.budget = ByteBudget(config.max_inflight_bytes)
        self._stop = threading.Event()
        self._committing: queue.Queue = queue.Queue(maxsize=PIPELINE_DEPTH)
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.mqtt5 = False
        self.client: mqtt.Client | None = None
        self.stuck_after_s = STUCK_COMMIT_S
        self._waiting_since: float | None = None  # monotonic start of the finisher's current commit wait

    def stuck_for(self) -> float:
        """Seconds the oldest uncommitted batch has waited for its commit (0 when none is waiting)."""
        since = self._waiting_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        self.mqtt5 = cfg.protocol == "5" or (cfg.protocol == "auto" and probe_mqtt5(cfg))
        if self.mqtt5:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                 protocol=mqtt.MQTTv5, manual_ack=True)
        else:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                 protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
        cfg.secure(client)  # username/password, TLS (mqtt.tls, ca_file, cert_file, key_file)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(0.2, 5)
        self.client = client
        self._thread = threading.Thread(target=self._run, name="ingest-batcher", daemon=True)
        self._finisher = threading.Thread(target=self._finish, name="ingest-finisher", daemon=True)
        self._thread.start()
        self._finisher.start()
        props = None
        if self.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = cfg.session_expiry_s
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s,
                             clean_start=False if self.mqtt5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                             properties=props)
        client.loop_start()
        log.info("collector %s connecting to %s:%d (MQTT %s)", cfg.client_id, cfg.host, cfg.port,
                 "5" if self.mqtt5 else "3.1.1")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)
            self._finisher.join(30)
        if self.client:
            self.client.disconnect()
            self.client.loop_stop()

    # -- paho callbacks (network thread) -------------------------------------
    def _filters(self) -> list[str]:
        group = self.cfg.shared_group
        fs = [topics.SAMPLES_FILTER, topics.STATUS_FILTER, topics.TELEMETRY_FILTER]
        return [topics.shared(f, group) for f in fs] if group else fs

    def _on_connect(self, client, userdata, flags, rc, properties) -> None:
        if rc.is_failure:
            log.error("broker refused the collector: %s", rc)
            return
        try:
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        client.subscribe([(f, 1) for f in self._filters()])
        self.connected.set()
        self.metrics.gauge("mqtt_connected", 1)
        log.info("collector connected (session present: %s)", flags.session_present)

    def _on_disconnect(self, client, userdata, flags, rc, properties) -> None:
        self.connected.clear()
        self.metrics.gauge("mqtt_connected", 0)
        if not self._stop.is_set():
            log.warning("collector disconnected (%s); paho reconnects", rc)

    def _on_message(self, client, userdata, msg) -> None:
        waits = self.budget.waits
        self.budget.take(len(msg.payload), self._stop)
        if self.budget.waits != waits:
            self.metrics.inc("ingest_backpressure_waits")
        self.metrics.gauge("ingest_inflight_bytes", self.budget.held)
        self._inbox.put(Raw(msg.topic, msg.payload, msg.mid, msg.qos))

    def _release(self, raws: list[Raw]) -> None:
        self.budget.give(sum(len(r.payload) for r in raws))
        self.metrics.gauge("ingest_inflight_bytes", self.budget.held)

    # -- batching thread: gather, decode, hash, queue the commit ------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.cfg.batch_ms / 1000
            while len(batch) < self.cfg.batch_max:
                left = deadline - time.monotonic()
                try:
                    batch.append(self._inbox.get(timeout=left) if left > 0 else self._inbox.get_nowait())
                except queue.Empty:
                    break
            self.metrics.inc("ingest_received", len(batch))
            try:
                t0 = time.perf_counter()
                b = self._classify(batch)
                now = time.time()
                prepared = [incoming(sample, now) for sample, _raws in b.samples.values()]
                self.metrics.inc("ingest_prepare_seconds", time.perf_counter() - t0)
                futures = self._submit(b, prepared)
            except Exception:  # a bug must not end ingest; unacknowledged, the batch comes back on reconnect
                self.metrics.inc("ingest_errors")
                log.exception("ingest batch of %d messages failed; not acknowledged", len(batch))
                self._release(batch)
                continue
            # The next batch is decoded while this one commits; the bounded queue is the backpressure.
            self._committing.put((b, prepared, futures))
        self._committing.put(None)

    # -- finishing thread: wait for the commit, then receipts, then acks ------
    def _finish(self) -> None:
        while True:
            item = self._committing.get()
            if item is None:
                return
            b, prepared, futures = item
            result = self._wait(b, prepared, futures)
            self._release(b.acks)  # committed (or given up on while stopping): the bytes are the store's now
            if result is None:
                continue  # stopping: nothing acked, so the broker redelivers to the next collector
            try:
                self._send_receipts(b, result.stored, result.conflicts)
            except Exception:  # stored anyway: the agent resends and gets its receipt then
                log.exception("receipts for a committed batch could not be sent")
            for raw in b.acks:
                if raw.qos > 0:
                    self.client.ack(raw.mid, raw.qos)

    def _classify(self, raws: list[Raw]) -> _Batch:
        b = _Batch({}, [], [], [], {}, list(raws))
        now = time.time()
        for raw in raws:
            try:
                msg = protocol.decode(raw.topic, raw.payload)
            except protocol.ProtocolError as e:
                self._dead(b, raw, e.reason, e.detail, now)
                continue
            if isinstance(msg, protocol.Sample):
                if self.meter is not None and not self.meter.admit():
                    # Refused for now: acked to the broker but never receipted, so the agent keeps the
                    # frame in its outbox and sends it again after its receipt timeout.
                    self.metrics.inc("dead_letters", label="store_full")
                    if now - self._full_logged > 60.0:  # once a minute: agents resend every receipt timeout
                        self._full_logged = now
                        log.warning("store full (retention.hard_limit_bytes): samples refused for now, agents keep "
                                    "them (edgeloop_dead_letters_total{reason=\"store_full\"} counts them)")
                    continue
                if not msg.frame_id.startswith(msg.agent_id + "."):
                    # Frame ids are "<agent>.<camera>.<n>": another agent's id would shadow its real frame.
                    self._dead(b, raw, "frame_id_not_owned", f"{msg.frame_id!r:.200} from {msg.agent_id}", now)
                    continue
                b.samples.setdefault((msg.agent_id, msg.frame_id), (msg, []))[1].append(raw)
            elif isinstance(msg, protocol.Status):
                b.fleet_status.append(msg)
            elif isinstance(msg, protocol.Telemetry):
                b.fleet_telemetry.append(msg)
            else:
                self._dead(b, raw, "unexpected_kind", f"{msg.KIND} on {raw.topic}", now)
        return b

    def _dead(self, b: _Batch, raw: Raw, reason: str, detail: str, now: float) -> None:
        log.warning("dead letter on %s: %s %s", raw.topic[:200], reason, detail[:200])
        self.metrics.inc("dead_letters", label=reason)
        b.dead.append(DeadLetter(raw.topic, reason, detail, len(raw.payload), raw.payload[:256], now))
        frame = _rejected_frame(raw.topic, raw.payload)
        if frame:
            b.rejected.setdefault(frame[0], []).append((frame[1], reason))

    def _submit(self, b: _Batch, prepared: list[IncomingSample]) -> list:
        # Queued together, these writes share one group commit (one fsync).
        futures = [self.store.ingest_samples_async(prepared)]
        if b.dead:
            futures.append(self.store.record_dead_letters_async(b.dead))
        if b.fleet_status or b.fleet_telemetry:
            futures.append(self.store.record_fleet_async(b.fleet_status, b.fleet_telemetry))
        return futures

    def _wait(self, b: _Batch, prepared: list[IncomingSample], futures: list):
        """The batch's ingest result once committed; storage errors are retried, never acked."""
        t0 = time.perf_counter()
        self._waiting_since = time.monotonic()
        try:
            result = self._commit(b, prepared, futures)
        except _Stopping:
            return None
        finally:
            self._waiting_since = None
        self.metrics.inc("ingest_commit_seconds", time.perf_counter() - t0)
        self.metrics.inc("ingest_batches")
        self.metrics.inc("ingest_stored", result.new)
        self.metrics.inc("ingest_duplicates", result.duplicates)
        if self.meter is not None and result.new:
            kept = set(result.stored)
            self.meter.added(sum(len(inc.sample.jpeg) for inc in prepared if inc.sample.frame_id in kept))
        return result

    def _commit(self, b: _Batch, prepared: list[IncomingSample], futures: list) -> IngestResult:
        for attempt in range(10**9):
            try:
                return [f.result() for f in futures][0]
            except Exception as e:  # disk full, I/O error: keep the batch, try again, ack nothing meanwhile
                self.metrics.inc("ingest_errors")
                if _refused_by_store(e):
                    log.warning("the store refused part of a batch (%s); writing its messages one by one", e)
                    return self._isolate(b, prepared)
                self._pause(attempt, "ingest commit failed (attempt %d); retrying")
                futures = self._submit(b, prepared)
        raise AssertionError("unreachable")

    def _pause(self, attempt: int, message: str) -> None:
        if self._stop.is_set():
            raise _Stopping()
        log.exception(message, attempt + 1)
        time.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])

    def _one(self, write) -> tuple[bool, object]:
        """(True, result) once ``write()`` committed; (False, error) when the store refuses it for good."""
        for attempt in range(10**9):
            try:
                return True, write().result()
            except Exception as e:
                if _refused_by_store(e):
                    return False, e
                self.metrics.inc("ingest_errors")
                self._pause(attempt, "ingest commit of one message failed (attempt %d); retrying")
        raise AssertionError("unreachable")

    def _isolate(self, b: _Batch, prepared: list[IncomingSample]) -> IngestResult:
        """One transaction per message, so only what the store refuses is left out (and dead-lettered)."""
        stored, conflicts, new, duplicates = [], [], 0, 0
        refused: list[DeadLetter] = []
        now = time.time()
        for inc in prepared:
            ok, r = self._one(lambda inc=inc: self.store.ingest_samples_async([inc]))
            if ok:
                stored += r.stored
                conflicts += r.conflicts
                new, duplicates = new + r.new, duplicates + r.duplicates
                continue
            s = inc.sample
            raw = b.samples[(s.agent_id, s.frame_id)][1][0]
            detail = f"{type(r).__name__}: {str(r)[:300]!r}"
            log.warning("the store refused sample %r: %s", s.frame_id[:200], detail)
            self.metrics.inc("dead_letters", label="store_refused")
            refused.append(DeadLetter(raw.topic, "store_refused", detail, len(raw.payload), raw.payload[:256], now))
            b.rejected.setdefault(s.agent_id, []).append((s.frame_id, "store_refused"))
        writes = [lambda d=d: self.store.record_dead_letters_async([d]) for d in b.dead + refused]
        writes += [lambda m=m: self.store.record_fleet_async([m], []) for m in b.fleet_status]
        writes += [lambda m=m: self.store.record_fleet_async([], [m]) for m in b.fleet_telemetry]
        for write in writes:
            ok, err = self._one(write)
            if not ok:  # counted and logged; fleet state comes again with the next status
                self.metrics.inc("dead_letters", label="store_refused")
                log.warning("the store refused a dead letter or fleet message: %s", err)
        return IngestResult(stored=tuple(stored), new=new, duplicates=duplicates, conflicts=tuple(conflicts))

    def _send_receipts(self, b: _Batch, stored: tuple[str, ...], conflicts: tuple = ()) -> None:
        by_agent: dict[str, list[str]] = {}
        kept, taken = set(stored), set(conflicts)
        for agent, frame_id in b.samples:
            if (agent, frame_id) in taken:
                self.metrics.inc("dead_letters", label="frame_id_conflict")
                b.rejected.setdefault(agent, []).append((frame_id, "frame_id_conflict"))
            elif frame_id in kept:
                by_agent.setdefault(agent, []).append(frame_id)
        for agent in set(by_agent) | set(b.rejected):
            ok, bad = by_agent.get(agent, []), b.rejected.get(agent, [])
            for i in range(0, max(len(ok), len(bad)), MAX_IDS_PER_RECEIPT):
                receipt = protocol.Receipt(stored=tuple(ok[i:i + MAX_IDS_PER_RECEIPT]),
                                           rejected=tuple(bad[i:i + MAX_IDS_PER_RECEIPT]), at=time.time())
                self.client.publish(topics.receipt_topic(agent), protocol.encode(receipt), qos=self.cfg.receipt_qos)
                self.metrics.inc("receipts_sent")
