"""A message the store refuses for good does not stop ingest, and /healthz reports a stuck commit.

The refusal is real: the test adds a constraint to the running store (a trigger on SQLite, a CHECK
on PostgreSQL) that refuses one sample's ``reason``; both backends run (conftest BOTH_BACKENDS).
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt

import factories
import protocol
from mqtt_util import Recorder, wait_until
from protocol import topics
from trainer.server.config import ServerConfig
from trainer.server.embedded import EmbeddedServer

AGENT = "cam-agent-1"
TOKEN = "poison-test-token-0123456789"


def _config(broker, tmp_path: Path) -> ServerConfig:
    return ServerConfig.model_validate({"mqtt": {"host": broker.host, "port": broker.port, "batch_ms": 200},
                                        "http": {"port": 0},
                                        "store": {"data_dir": str(tmp_path / "data")}})


def _poison(store) -> None:
    def fn(db):
        if db.dialect.name == "sqlite":
            db.execute("CREATE TRIGGER poison BEFORE INSERT ON samples WHEN NEW.reason = 'poison'"
                       " BEGIN SELECT RAISE(ABORT, 'poisoned reason'); END")
        else:
            db.execute("ALTER TABLE samples ADD CONSTRAINT poison CHECK (reason <> 'poison')")
    store.write(fn)


def _publish(broker, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for info in [client.publish(t, p, qos=1) for t, p in messages]:
            info.wait_for_publish(20)
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_sample_the_store_refuses_is_dead_lettered_and_the_rest_stored(broker, tmp_path: Path) -> None:
    rec = Recorder(broker.host, broker.port, [topics.receipt_topic(AGENT)])
    with EmbeddedServer(_config(broker, tmp_path), TOKEN) as srv:
        svc = srv.service
        assert svc.collector.connected.wait(10)
        _poison(svc.store)
        frames = [factories.sample(frame_id=f"{AGENT}.gate.{i}", jpeg=factories.jpeg(seed=i),
                                   reason="poison" if i == 3 else "margin") for i in range(8)]
        # One batch (batch_ms 200): before the fix the whole batch was retried forever.
        _publish(broker, [(protocol.topic_for(s), protocol.encode(s)) for s in frames]
                 + [(protocol.topic_for(factories.status()), protocol.encode(factories.status()))])
        stored, rejected = set(), {}
        while len(stored) < 7 or not rejected:
            topic, payload, _ = rec.get(timeout=15)  # raises queue.Empty when ingest is stuck
            r = protocol.decode(topic, payload)
            stored.update(r.stored)
            rejected.update(dict(r.rejected))
        assert stored == {s.frame_id for s in frames if s.reason != "poison"}
        assert rejected == {f"{AGENT}.gate.3": "store_refused"}
        assert svc.store.count() == 7
        assert wait_until(lambda: svc.store.dead_letter_counts().get("store_refused") == 1)
        assert svc.metrics.get("dead_letters", "store_refused") == 1
        assert wait_until(lambda: svc.store.fleet())  # the batch's status was stored too
        # ingest goes on afterwards
        late = factories.sample(frame_id=f"{AGENT}.gate.late", jpeg=factories.jpeg(seed=99))
        _publish(broker, [(protocol.topic_for(late), protocol.encode(late))])
        assert wait_until(lambda: svc.store.count() == 8)
        assert httpx.get(srv.url + "healthz").json()["ok"] is True
    rec.close()


def _hold_write_lock(store_url: str | None, data: Path, locked: threading.Event, release: threading.Event) -> None:
    """Another connection holds the samples table against writes until ``release`` (a real stuck commit)."""
    if store_url is None:
        import sqlite3

        conn = sqlite3.connect(data / "edgeloop.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        conn = psycopg.connect(store_url)
        conn.execute("LOCK TABLE samples IN SHARE MODE")  # blocks inserts, not reads
    locked.set()
    release.wait(60)
    conn.rollback() if store_url else conn.execute("ROLLBACK")
    conn.close()


def test_healthz_reports_a_stuck_ingest_commit(broker, tmp_path: Path, store_url) -> None:
    with EmbeddedServer(_config(broker, tmp_path), TOKEN) as srv:
        svc = srv.service
        assert svc.collector.connected.wait(10)
        svc.collector.stuck_after_s = 0.5
        locked, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(store_url, tmp_path / "data", locked, release))
        holder.start()
        try:
            assert locked.wait(10)
            s = factories.sample(frame_id=f"{AGENT}.gate.1")
            _publish(broker, [(protocol.topic_for(s), protocol.encode(s))])
            assert wait_until(lambda: httpx.get(srv.url + "healthz").status_code == 503, 30)
            body = httpx.get(srv.url + "healthz").json()
            assert body["ok"] is False and "ingest commit stuck" in body["reason"]
        finally:
            release.set()
            holder.join(30)
        assert wait_until(lambda: svc.store.count() == 1, 30)
        assert wait_until(lambda: httpx.get(srv.url + "healthz").json()["ok"] is True)
