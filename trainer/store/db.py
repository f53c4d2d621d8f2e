"""The SQLite backend: a single writer thread fed by a queue, readers per thread.

``trainer.store.backends.open_database`` picks this or ``trainer.store.pg``
from the store URL; both offer ``write(fn)``, ``write_async(fn)``, ``read()``,
``close()``, ``dialect`` and ``url``, and hand ``fn`` a ``trainer.store.sql.Conn``.

datasette's pattern: every write goes through ``Database.write(fn)``, which
runs ``fn(db)`` on the writer thread inside a transaction and blocks until it
is committed, so "database is locked" cannot happen between our own writers.
Queued writes are group-committed: one ``BEGIN IMMEDIATE ... COMMIT`` (one
fsync) covers every task waiting at that moment, each task isolated by a
savepoint so a failing one rolls back alone.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, TypeVar

from .sql import SQLITE, Conn

log = logging.getLogger(__name__)
T = TypeVar("T")
GROUP_MAX = 64  # tasks per group commit: bounds how long one transaction holds the WAL
CHECKPOINT_EVERY_S = 0.5


def connect(path: Path, *, busy_timeout_ms: int, synchronous: str = "FULL") -> Conn:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    _journal_wal(conn, busy_timeout_ms)
    # FULL: the WAL is fsynced at every commit, so a receipt sent after a
    # commit survives a power cut, not only a process crash.
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    return Conn(conn, SQLITE)


def _journal_wal(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Switch to WAL, waiting out another process that is doing the same.

    Switching a new file to WAL takes an exclusive lock and SQLite does not
    always call the busy handler for it: two collectors opening one fresh
    database together got "database is locked" at once, and one crashed.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class ClosedError(RuntimeError):
    """The database was closed while a write was queued."""


class Database:
    """A SQLite file with one writer thread and one reader connection per thread."""

    dialect = SQLITE

    def __init__(self, path: Path, *, busy_timeout_ms: int = 10_000, synchronous: str = "FULL",
                 migrate: Callable[[Conn], None] | None = None) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._busy = busy_timeout_ms
        self._queue: queue.Queue[tuple[Callable, Future] | None] = queue.Queue()
        self._local = threading.local()
        self._readers: list[Conn] = []
        self._readers_lock = threading.Lock()
        self._writer_db = connect(self.path, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous)
        if migrate is not None:
            migrate(self._writer_db)
        # Checkpoints (copying the WAL into the database file) run on their own connection and thread, so
        # a commit never waits for one; WAL appends and a passive checkpoint proceed side by side.
        self._writer_db.execute("PRAGMA wal_autocheckpoint = 0")
        self._closed = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sqlite-writer:{self.path.name}", daemon=True)
        self._thread.start()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name=f"sqlite-checkpoint:{self.path.name}",
                                              daemon=True)
        self._checkpointer.start()

    # -- writes -------------------------------------------------------------
    def write_async(self, fn: Callable[[Conn], T]) -> "Future[T]":
        if self._closed:
            raise ClosedError(f"{self.path} is closed")
        fut: Future[T] = Future()
        self._queue.put((fn, fut))
        return fut

    def write(self, fn: Callable[[Conn], T], timeout: float | None = None) -> T:
        """Run ``fn(db)`` in a transaction on the writer thread; return once committed."""
        return self.write_async(fn).result(timeout)

    def _run(self) -> None:
        db = self._writer_db
        while True:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            stop = False
            while len(group) < GROUP_MAX:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            self._commit_group(db, group)
            if stop:
                break
        db.raw.close()

    @staticmethod
    def _commit_group(db: Conn, group: list[tuple[Callable, Future]]) -> None:
        results: list[tuple[Future, object, BaseException | None]] = []
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            for fn, fut in group:
                db.conn.execute("SAVEPOINT task")
                try:
                    value = fn(db)
                except BaseException as e:  # handed to the caller, whatever it is
                    db.conn.execute("ROLLBACK TO task")
                    db.conn.execute("RELEASE task")
                    results.append((fut, None, e))
                else:
                    db.conn.execute("RELEASE task")
                    results.append((fut, value, None))
            db.conn.execute("COMMIT")
        except BaseException as e:
            log.exception("group commit of %d writes failed", len(group))
            if db.raw.in_transaction:
                db.conn.execute("ROLLBACK")
            for _fn, fut in group:
                if not fut.done():
                    fut.set_exception(e)
            return
        for fut, value, err in results:
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(value)

    def _checkpoint_loop(self) -> None:
        db = connect(self.path, busy_timeout_ms=self._busy)
        try:
            while not self._stopping.wait(CHECKPOINT_EVERY_S):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.OperationalError as e:  # busy with a long reader: try again next time
                    log.debug("checkpoint skipped: %s", e)
        finally:
            db.raw.close()

    # -- reads --------------------------------------------------------------
    def read(self) -> Conn:
        """This thread's reader connection (a WAL snapshot per statement/transaction)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path, busy_timeout_ms=self._busy)
            self._local.db = db
            with self._readers_lock:
                self._readers.append(db)
        return db

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(30)
        self._checkpointer.join(30)
        with self._readers_lock:
            for db in self._readers:
                try:
                    db.raw.close()
                except sqlite3.ProgrammingError:
                    pass
            self._readers.clear()
        # Anything still queued after the stop marker never ran.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].set_exception(ClosedError(f"{self.path} closed before this write ran"))
