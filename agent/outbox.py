"""The outbox: picked frames on disk until the collector's receipt names them.

SQLite in WAL mode, one writer thread (every write goes through its queue),
readers on their own connections. Bounded in bytes: the database and its WAL
together stay under ``max_bytes``. When a new frame does not fit, frames are
evicted in this order:

1. lowest uncertainty first (the frame the model was surest about teaches least),
2. among equal uncertainty, oldest first.

The new frame itself competes too: if it is the least uncertain, it is the one
evicted. Counters (picked, delivered, rejected, evicted) live in the same
database and change in the same transaction as the rows, so after any crash
``picked == delivered + rejected + evicted + pending`` still holds.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

ROW_OVERHEAD = 512  # bytes of B-tree and row header we charge per frame on top of its payload
DATA_SHARE = 0.7  # of max_bytes for rows; the rest is headroom for the WAL and free pages
WAL_SHARE = 0.2
COUNTERS = ("picked", "delivered", "rejected", "evicted")

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    frame_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    camera_id TEXT NOT NULL,
    created REAL NOT NULL,
    uncertainty REAL NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_eviction ON items (uncertainty, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxItem:
    frame_id: str
    topic: str
    payload: bytes


@dataclass(frozen=True)
class OutboxStats:
    picked: int
    delivered: int
    rejected: int
    evicted: int
    pending: int
    pending_bytes: int
    disk_bytes: int


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


class Outbox:
    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.data_budget = int(max_bytes * DATA_SHARE)
        self.wal_limit = int(max_bytes * WAL_SHARE)
        self._queue: queue.Queue = queue.Queue()
        self._local = threading.local()
        self._writer: sqlite3.Connection | None = None
        ready: Future = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="outbox-writer", daemon=True)
        self._thread.start()
        ready.result()

    # -- writer thread -------------------------------------------------------

    def _open_writer(self) -> sqlite3.Connection:
        conn = _connect(self.path)
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table: lets freed pages be returned
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # a picked frame must survive a power cut
        pages = max(16, self.wal_limit // 4096 // 2)
        conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
        conn.execute(f"PRAGMA journal_size_limit = {self.wal_limit // 2}")
        conn.executescript(SCHEMA)
        conn.executemany("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", [(c,) for c in COUNTERS])
        return conn

    def _run(self, ready: Future) -> None:
        try:
            self._writer = self._open_writer()
        except sqlite3.Error as e:
            ready.set_exception(e)
            return
        ready.set_result(None)
        while True:
            job = self._queue.get()
            if job is None:
                break
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._transaction(fn))
            except Exception as e:  # reported to whoever waits on the future
                fut.set_exception(e)
        self._writer.close()

    def _transaction(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._keep_wal_small(conn)
        return result

    def _keep_wal_small(self, conn: sqlite3.Connection) -> None:
        try:
            wal = os.path.getsize(f"{self.path}-wal")
        except OSError:
            return
        if wal > self.wal_limit // 2:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _submit(self, fn: Callable[[sqlite3.Connection], object]) -> Future:
        fut: Future = Future()
        self._queue.put((fn, fut))
        return fut

    @staticmethod
    def _bump(conn: sqlite3.Connection, name: str, n: int) -> None:
        if n:
            conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, name))

    # -- writes --------------------------------------------------------------

    def put(self, frame_id: str, topic: str, camera_id: str, uncertainty: float, payload: bytes,
            created: float | None = None) -> Future:
        """Store a picked frame; the future's result lists the frame ids evicted to make room."""
        created = time.time() if created is None else created

        def write(conn: sqlite3.Connection) -> list[str]:
            cur = conn.execute(
                "INSERT OR IGNORE INTO items (frame_id, topic, camera_id, created, uncertainty, size, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (frame_id, topic, camera_id, created, uncertainty, len(payload) + ROW_OVERHEAD, payload))
            self._bump(conn, "picked", cur.rowcount)
            return self._evict(conn)

        return self._submit(write)

    def _evict(self, conn: sqlite3.Connection) -> list[str]:
        (total,) = conn.execute("SELECT coalesce(sum(size), 0) FROM items").fetchone()
        evicted = []
        if total <= self.data_budget:
            return evicted
        for seq, frame_id, size in conn.execute(
                "SELECT seq, frame_id, size FROM items ORDER BY uncertainty ASC, seq ASC").fetchall():
            if total <= self.data_budget:
                break
            conn.execute("DELETE FROM items WHERE seq = ?", (seq,))
            total -= size
            evicted.append(frame_id)
        self._bump(conn, "evicted", len(evicted))
        conn.execute("PRAGMA incremental_vacuum")
        log.warning("outbox full (%d bytes budget): evicted %d frame(s), least uncertain first",
                    self.data_budget, len(evicted))
        return evicted

    def ack(self, stored: list[str] | tuple[str, ...], rejected: list[str] | tuple[str, ...] = ()) -> Future:
        """Delete frames the collector stored or refused for good; the result is how many were ours."""

        def write(conn: sqlite3.Connection) -> int:
            n = 0
            for name, ids in (("delivered", stored), ("rejected", rejected)):
                count = 0
                for fid in ids:
                    count += conn.execute("DELETE FROM items WHERE frame_id = ?", (fid,)).rowcount
                self._bump(conn, name, count)
                n += count
            return n

        return self._submit(write)

    # -- reads (any thread, own connection) ------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
        return conn

    def due(self, limit: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[OutboxItem]:
        """Up to ``limit`` frames to send, oldest first, skipping those already in flight."""
        rows = self._reader().execute(
            "SELECT frame_id, topic, payload FROM items ORDER BY seq LIMIT ?", (limit + len(exclude),)).fetchall()
        return [OutboxItem(f, t, p) for f, t, p in rows if f not in exclude][:limit]

    def pending_ids(self) -> list[str]:
        return [r[0] for r in self._reader().execute("SELECT frame_id FROM items ORDER BY seq")]

    def disk_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                pass
        return total

    def stats(self) -> OutboxStats:
        conn = self._reader()
        conn.execute("BEGIN")  # one snapshot for the counters and the rows
        try:
            counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            pending, pending_bytes = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM items").fetchone()
        finally:
            conn.execute("COMMIT")
        return OutboxStats(*(counters.get(c, 0) for c in COUNTERS), pending, pending_bytes, self.disk_bytes())

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every write submitted so far is committed."""
        self._submit(lambda conn: None).result(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(30)
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
