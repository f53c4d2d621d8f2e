"""Durable ingest throughput vs a bare paho subscriber on the same broker.

Project: frames published QoS 1 -> collector process(es) (decode, image bytes
and rows in one commit per batch) -> receipt back to the publisher; the clock
stops when the publisher holds a receipt for every frame.

``--store`` picks the backend: ``sqlite`` (a fresh file per run) or a
``postgresql://`` URL (a fresh schema per run in that database, dropped
after). ``--collectors 1,2`` runs the project with 1 and then 2 collector
processes sharing the topics (MQTT 5 shared subscription; PostgreSQL only),
and the durable baseline with as many consumers sharing them.

Two baselines on the same broker, in the same run, alternating with the project:

- durable (``ratio``): a hand-written paho consumer doing the same durable work
  as simply as it can be written: QoS 1 with manual acks, batches of the same
  size and wait, ``protocol.decode``, the JPEG and a sample row committed
  (SQLite: WAL, ``synchronous=FULL``, ``INSERT OR IGNORE``; PostgreSQL: bare
  psycopg, ``INSERT ... ON CONFLICT DO NOTHING``, the server's durable commit;
  by frame id, one multi-row statement per table and batch), then the
  receipts, then the acks; one worker thread beside paho's per consumer. Its
  clock stops like the project's, at the last receipt;
- counting (``ratio_vs_counting``): a paho subscriber that only counts the
  messages, the ceiling of what the broker and paho can deliver.

The publisher runs in its own process in every case, so the measurements
differ only in what receives. Zero loss is checked (every frame stored once,
bytes intact) for the project and the durable baseline. It also times the two
durable image stores considered (fsynced files vs SQLite BLOBs).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt

import protocol
from edgeloop.broker import LocalBroker
from protocol import Sample, topics

AGENT = "bench-agent"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--kb", type=int, default=20, help="approximate JPEG size")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of each; medians are reported")
    parser.add_argument("--batch-max", type=int, default=200)
    parser.add_argument("--batch-ms", type=float, default=50.0)
    parser.add_argument("--max-inflight", type=int, default=None,
                        help="broker max_inflight_messages (LocalBroker's and deploy/'s default is 1000)")
    parser.add_argument("--store", default="sqlite",
                        help="sqlite, or a postgresql:// URL of a database the bench may create schemas in")
    parser.add_argument("--collectors", default="1",
                        help="collector processes per run, e.g. 1,2 (more than 1 needs PostgreSQL and mosquitto)")


def _frames(n: int, kb: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    side = int((kb * 1024 / 0.85) ** 0.5)  # noise at q85 is about 0.85 bytes per pixel
    base = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        img = base.copy()
        img[i % side, :, :] = rng.integers(0, 255, (side, 3), dtype=np.uint8)  # every frame distinct
        jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
        out.append(Sample(agent_id=AGENT, camera_id="cam", frame_id=f"{AGENT}.cam.{i:07d}", captured_at=time.time(),
                          model_name="bench", model_version=1, task="classification", labels=("a", "b"),
                          scores=(0.5, 0.5), boxes=(), uncertainty=0.5, strategy="margin", reason="bench",
                          width=side, height=side, jpeg=jpeg))
    return out


def _publisher(host: str, port: int, payloads: list[tuple[str, bytes]], want_receipts: bool, out) -> None:
    """Child process: publish everything QoS 1; report (t0, t_end) where t_end is the last receipt (or None)."""
    got: set[str] = set()
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")

    def on_receipt(c, u, msg) -> None:
        got.update(protocol.decode(msg.topic, msg.payload).stored)
        if len(got) >= len(payloads):
            done.set()
    subscribed = threading.Event()
    client.on_message = on_receipt
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(host, port)
    client.loop_start()
    if want_receipts:
        client.subscribe(topics.receipt_topic(AGENT), qos=1)
        subscribed.wait(10)
    t0 = time.monotonic()
    infos = [client.publish(t, p, qos=1) for t, p in payloads]
    for info in infos:
        info.wait_for_publish(120)
    t_end = None
    if want_receipts:
        done.wait(300)
        t_end = time.monotonic() if done.is_set() else None
    client.loop_stop()
    client.disconnect()
    out.put((t0, t_end, len(got)))


def _baseline(broker: LocalBroker, payloads: list[tuple[str, bytes]]) -> dict:
    count, last = [0], [0.0]
    done = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare")

    def on_message(c, u, msg) -> None:
        count[0] += 1
        if count[0] >= len(payloads):
            last[0] = time.monotonic()
            done.set()
    subscribed = threading.Event()
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    sub.subscribe(topics.SAMPLES_FILTER, qos=1)
    subscribed.wait(10)
    t0, _, _ = _run_publisher(broker, payloads, want_receipts=False)
    done.wait(300)
    sub.loop_stop()
    sub.disconnect()
    seconds = last[0] - t0
    return {"received": count[0], "seconds": round(seconds, 3), "frames_per_s": round(len(payloads) / seconds, 1)}


class _DurableBare:
    """The durable baseline: batch, decode, commit to SQLite, receipt, ack (see the module docstring)."""

    def __init__(self, broker: LocalBroker, sink: "_SqliteSink | _PgSink", batch_max: int, batch_ms: float,
                 index: int = 0, shared: bool = False, group: str = "") -> None:
        import queue

        # A client id per run: a persistent session left by an earlier run would hand this one its queue.
        run = uuid.uuid4().hex[:8]
        self.inbox: queue.Queue = queue.Queue()
        self.batch_max, self.batch_s = batch_max, batch_ms / 1000
        self.sink = sink
        self.stop = threading.Event()
        if shared:  # MQTT 5 shared subscription, as the collectors' [mqtt] shared_group
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-durable-{run}-{index}",
                                      protocol=mqtt.MQTTv5, manual_ack=True)
        else:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-durable-{run}",
                                      clean_session=False, manual_ack=True)
        self.subscribed = threading.Event()
        self.client.on_message = lambda c, u, msg: self.inbox.put(msg)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        if shared:
            self.client.connect(broker.host, broker.port, clean_start=False)
        else:
            self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe((f"$share/bench-{group}/" if shared else "") + topics.SAMPLES_FILTER, qos=1)
        self.worker = threading.Thread(target=self._run, name="bench-durable", daemon=True)
        self.worker.start()

    def _batch(self) -> list:
        import queue

        try:
            batch = [self.inbox.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.batch_s
        while len(batch) < self.batch_max:
            left = deadline - time.monotonic()
            try:
                batch.append(self.inbox.get(timeout=left) if left > 0 else self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while not self.stop.is_set():
            msgs = self._batch()
            if not msgs:
                continue
            samples = [protocol.decode(m.topic, m.payload) for m in msgs]
            blobs = {hashlib.sha256(s.jpeg).hexdigest(): s.jpeg for s in samples}
            rows = [(s.frame_id, s.agent_id, s.camera_id, s.captured_at, s.uncertainty, sha)
                    for s, sha in zip(samples, [hashlib.sha256(s.jpeg).hexdigest() for s in samples])]
            self.sink.commit([(k, len(v), v) for k, v in blobs.items()], rows)
            ids = tuple(s.frame_id for s in samples)
            for i in range(0, len(ids), 500):
                receipt = protocol.Receipt(stored=ids[i:i + 500], at=time.time())
                self.client.publish(topics.receipt_topic(AGENT), protocol.encode(receipt), qos=1)
            for m in msgs:
                self.client.ack(m.mid, m.qos)

    def close(self) -> None:
        self.stop.set()
        self.worker.join(10)
        self.client.disconnect()
        self.client.loop_stop()
        self.sink.close()


class _SqliteSink:
    """The bare SQLite side: WAL, synchronous=FULL, one BEGIN IMMEDIATE ... COMMIT per batch."""

    mark = "?"

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS blobs (sha TEXT PRIMARY KEY, size INTEGER, data BLOB)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS samples (frame_id TEXT PRIMARY KEY, agent_id TEXT,"
                          " camera_id TEXT, captured_at REAL, uncertainty REAL, blob TEXT)")

    def commit(self, blobs: list[tuple], rows: list[tuple]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        _multi_insert(self.conn, "INSERT OR IGNORE INTO blobs VALUES", blobs, "?", "")
        _multi_insert(self.conn, "INSERT OR IGNORE INTO samples VALUES", rows, "?", "")
        self.conn.execute("COMMIT")

    def stored(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT frame_id, blob FROM samples").fetchall())

    def close(self) -> None:
        self.conn.close()


class _PgSink:
    """The bare PostgreSQL side: one psycopg connection, one transaction per batch, durable commit."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("CREATE TABLE IF NOT EXISTS blobs (sha TEXT PRIMARY KEY, size BIGINT, data BYTEA)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS samples (frame_id TEXT PRIMARY KEY, agent_id TEXT,"
                          " camera_id TEXT, captured_at DOUBLE PRECISION, uncertainty DOUBLE PRECISION, blob TEXT)")

    def commit(self, blobs: list[tuple], rows: list[tuple]) -> None:
        with self.conn.transaction():
            _multi_insert(self.conn, "INSERT INTO blobs VALUES", blobs, "%s", " ON CONFLICT DO NOTHING")
            _multi_insert(self.conn, "INSERT INTO samples VALUES", rows, "%s", " ON CONFLICT DO NOTHING")

    def stored(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT frame_id, blob FROM samples").fetchall())

    def close(self) -> None:
        self.conn.close()


def _multi_insert(conn, insert: str, rows: list[tuple], mark: str, tail: str) -> None:
    width = len(rows[0])
    per = max(1, 900 // width)
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        values = ",".join(["(" + ",".join([mark] * width) + ")"] * len(chunk))
        conn.execute(f"{insert} {values}{tail}", [v for row in chunk for v in row])


def _durable_baseline(broker: LocalBroker, frames: list[Sample], payloads, workdir: Path, args, url: str | None,
                      consumers: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    group = uuid.uuid4().hex[:8]
    bares = [_DurableBare(broker, _PgSink(url) if url else _SqliteSink(workdir / "bare.db"), args.batch_max,
                          args.batch_ms, index=i, shared=consumers > 1, group=group) for i in range(consumers)]
    try:
        for bare in bares:
            bare.subscribed.wait(10)
        t0, t_end, receipted = _run_publisher(broker, payloads, want_receipts=True)
        stored = bares[0].sink.stored()
    finally:
        for bare in bares:
            bare.close()
    expected = {f.frame_id: hashlib.sha256(f.jpeg).hexdigest() for f in frames}
    seconds = (t_end - t0) if t_end else float("nan")
    return {"stored": len(stored), "receipted": receipted, "lost": len(set(expected) - set(stored)),
            "bytes_intact": stored == expected, "seconds": round(seconds, 3),
            "frames_per_s": round(len(frames) / seconds, 1)}


def _run_publisher(broker: LocalBroker, payloads, want_receipts: bool):
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_publisher, args=(broker.host, broker.port, payloads, want_receipts, out))
    proc.start()
    result = out.get(timeout=600)
    proc.join(30)
    return result


def _collector(config: dict, ready, stop) -> None:
    """Child process: one collector (no web server) until ``stop`` is set."""
    from trainer.server.config import ServerConfig
    from trainer.server.service import Service

    svc = Service(ServerConfig.model_validate(config)).start()
    try:
        if svc.collector.connected.wait(20):
            ready.release()
        stop.wait(900)
    finally:
        svc.stop()


def _project(broker: LocalBroker, frames: list[Sample], payloads, workdir: Path, args, url: str | None,
             collectors: int) -> dict:
    from trainer.store import Store

    mqtt_cfg = {"host": broker.host, "port": broker.port, "batch_max": args.batch_max, "batch_ms": args.batch_ms}
    run = uuid.uuid4().hex[:8]  # fresh MQTT sessions and share group, see below
    if collectors > 1:
        # A group per run: the collectors keep their sessions (and so their shared subscriptions) after they
        # stop, and mosquitto keeps handing an offline member its share, which an earlier run would take.
        mqtt_cfg.update(shared_group=f"collectors-{run}", protocol="5")
    # spawn, not fork: a collector forked from this threaded process could inherit a lock held by a thread.
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Semaphore(0), ctx.Event()
    procs = []
    for i in range(collectors):
        config = {"mqtt": {**mqtt_cfg, "client_id": f"collector-{run}-{i}"}, "http": {"enabled": False},
                  "store": {"data_dir": str(workdir), **({"url": url} if url else {})}}
        procs.append(ctx.Process(target=_collector, args=(config, ready, stop), name=f"collector-{i}"))
    try:
        for p in procs:
            p.start()
        for _ in procs:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a collector did not connect")
        time.sleep(0.3)  # subscriptions acknowledged
        t0, t_end, receipted = _run_publisher(broker, payloads, want_receipts=True)
    finally:
        stop.set()
        for p in procs:
            p.join(60)
    with Store(workdir, url=url) as store:
        stored = store.sample_blobs()
        counters = store.counters()
    expected = {f.frame_id: hashlib.sha256(f.jpeg).hexdigest() for f in frames}
    seconds = (t_end - t0) if t_end else float("nan")
    return {"stored": len(stored), "receipted": receipted, "lost": len(set(expected) - set(stored)),
            "bytes_intact": stored == expected, "seconds": round(seconds, 3),
            "frames_per_s": round(len(frames) / seconds, 1), "duplicates": counters.get("ingest_duplicates", 0)}


@contextmanager
def _fresh_store(store: str, workdir: Path):
    """None (SQLite in ``workdir``) or the URL of a new schema in the given PostgreSQL database, dropped after."""
    if store == "sqlite":
        yield None
        return
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{store}{'&' if '?' in store else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(store, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _files_fsynced(datas: list[bytes], root: Path, batch: int) -> float:
    """The alternative design: one file per image, tmp + fsync + rename, directory fsync per batch."""
    root.mkdir()
    t = time.perf_counter()
    for start in range(0, len(datas), batch):
        for data in datas[start:start + batch]:
            final = root / hashlib.sha256(data).hexdigest()
            tmp = final.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        fd = os.open(root, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return len(datas) / (time.perf_counter() - t)


def _sqlite_blobs(datas: list[bytes], path: Path, batch: int) -> float:
    """What the store does: BLOB rows, one WAL commit (synchronous=FULL) per batch."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE b (sha TEXT PRIMARY KEY, size INTEGER, data BLOB)")
    t = time.perf_counter()
    for start in range(0, len(datas), batch):
        conn.execute("BEGIN")
        conn.executemany("INSERT OR IGNORE INTO b VALUES (?, ?, ?)",
                         [(hashlib.sha256(d).hexdigest(), len(d), d) for d in datas[start:start + batch]])
        conn.execute("COMMIT")
    rate = len(datas) / (time.perf_counter() - t)
    conn.close()
    return rate


def _storage(frames: list[Sample], workdir: Path, batch: int = 100) -> dict:
    """Durable write rate of the two image stores considered, on the same disk in the same run."""
    datas = [f.jpeg for f in frames]
    return {"files_fsync_frames_per_s": round(_files_fsynced(datas, workdir / "cmp-files", batch), 1),
            "sqlite_blob_frames_per_s": round(_sqlite_blobs(datas, workdir / "cmp.db", batch), 1),
            "batch": batch}


def _median(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["frames_per_s"])[len(runs) // 2]


def _round_of(broker, frames, payloads, workdir: Path, args, n: int, r: int) -> tuple[dict, dict]:
    with _fresh_store(args.store, workdir) as url:
        durable = _durable_baseline(broker, frames, payloads, workdir / f"bare-{n}-{r}", args, url, n)
    with _fresh_store(args.store, workdir) as url:
        project = _project(broker, frames, payloads, workdir / f"data-{n}-{r}", args, url, n)
    return durable, project


def run(args: argparse.Namespace) -> dict:
    counts = [int(x) for x in str(args.collectors).split(",")]
    if args.store != "sqlite" and not args.store.startswith(("postgresql://", "postgres://")):
        raise SystemExit("--store is sqlite or a postgresql:// URL")
    if max(counts) > 1 and args.store == "sqlite":
        raise SystemExit("several collectors need --store postgresql://... (SQLite has one writer process)")
    frames = _frames(args.frames, args.kb)
    payloads = [(protocol.topic_for(f), protocol.encode(f)) for f in frames]
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-ingest-") as tmp:
        workdir = Path(tmp)
        extra = f"max_inflight_messages {args.max_inflight}" if args.max_inflight else ""
        baselines, by_n = [], {n: ([], []) for n in counts}
        with LocalBroker(workdir / "broker", extra_conf=extra) as broker:
            if max(counts) > 1 and not broker.supports_mqtt5:
                raise SystemExit("several collectors need mosquitto (MQTT 5 shared subscriptions)")
            # Alternating runs, medians reported: on a shared machine one run of each is mostly noise.
            for r in range(args.repeat):
                baselines.append(_baseline(broker, payloads))
                for n in counts:
                    durable, project = _round_of(broker, frames, payloads, workdir, args, n, r)
                    by_n[n][0].append(durable)
                    by_n[n][1].append(project)
            kind = broker.kind
        storage = _storage(frames[: min(len(frames), 1000)], workdir)
    baseline = _median(baselines)
    runs = {}
    for n, (durables, projects) in by_n.items():
        project, durable = _median(projects), _median(durables)
        runs[f"collectors_{n}"] = {
            "project": project, "durable_baseline": durable,
            "project_runs_frames_per_s": [p["frames_per_s"] for p in projects],
            "durable_baseline_runs_frames_per_s": [b["frames_per_s"] for b in durables],
            "ratio": round(project["frames_per_s"] / durable["frames_per_s"], 3),
            "ratio_vs_counting": round(project["frames_per_s"] / baseline["frames_per_s"], 3),
            "zero_loss": all(p["lost"] == 0 and p["bytes_intact"] and p["stored"] == len(frames)
                             for p in projects + durables)}
    first = runs[f"collectors_{counts[0]}"]
    return {
        "store": "sqlite" if args.store == "sqlite" else "postgresql", "collectors": counts,
        "repeat": args.repeat, "cpu_count": os.cpu_count(),
        "counting_baseline_runs_frames_per_s": [b["frames_per_s"] for b in baselines],
        "frames": len(frames), "payload_bytes_avg": round(sum(len(p) for _, p in payloads) / len(payloads)),
        "broker": kind, "broker_max_inflight": args.max_inflight or 1000, "counting_baseline": baseline,
        "runs": runs, "project": first["project"], "durable_baseline": first["durable_baseline"],
        "ratio": first["ratio"], "ratio_vs_counting": first["ratio_vs_counting"],
        "zero_loss": all(r["zero_loss"] for r in runs.values()) and all(b["received"] == len(frames)
                                                                          for b in baselines),
        "storage_compare": storage,
    }
