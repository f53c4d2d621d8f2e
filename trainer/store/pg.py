"""The PostgreSQL backend: a psycopg 3 connection pool, each write its own transaction.

Same surface as the SQLite ``Database`` (``write``, ``write_async``, ``read``,
``close``, ``dialect``, ``url``). Differences, and why:

- Writes run in the caller's thread (``write``) or on a small thread pool
  (``write_async``) on a pooled connection, in one ``BEGIN ... COMMIT`` each,
  at READ COMMITTED. Several processes (collectors, workers, the web server)
  write at once, so writes that read before they write either use
  ``ON CONFLICT`` (ingest, counters, upserts) or are retried whole when
  PostgreSQL reports a deadlock or serialization failure (``RETRIES``).
  ``fn`` must therefore touch nothing but the database.
- ``read()`` returns a reader whose every statement borrows a pooled
  connection (autocommit), fetches all rows and gives the connection back: a
  statement sees the latest commits, as a SQLite reader in WAL mode does.
- The pool checks a connection before lending it, so a restarted server costs
  the statements in flight, not the process.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import psycopg
from psycopg import errors
from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format
from psycopg_pool import ConnectionPool

from .db import ClosedError
from .sql import POSTGRES, Conn, Rows

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRIES = 5
INT8_OID = 20


class _BoolAsInt(Dumper):
    """Booleans are 0/1 integers on SQLite; the same columns are BIGINT here."""

    oid = INT8_OID
    format = Format.TEXT

    def dump(self, obj: bool) -> bytes:
        return b"1" if obj else b"0"


class _NumericAsNumber(Loader):
    """``sum`` over BIGINT is NUMERIC here; SQLite returns an int (or a float)."""

    def load(self, data) -> int | float:
        text = bytes(data).decode()
        return int(text) if text.lstrip("-").isdigit() else float(text)


def _configure(conn: psycopg.Connection) -> None:
    conn.adapters.register_dumper(bool, _BoolAsInt)
    conn.adapters.register_loader("numeric", _NumericAsNumber)


class PgDatabase:
    """A PostgreSQL database behind a pool; ``url`` is a libpq URL (``postgresql://user@host:port/db``)."""

    dialect = POSTGRES

    def __init__(self, url: str, *, migrate: Callable[[Conn], None] | None = None, max_size: int = 8,
                 connect_timeout_s: float = 30.0) -> None:
        self.url = url
        self._pool = ConnectionPool(url, min_size=1, max_size=max_size, kwargs={"autocommit": True},
                                    configure=_configure, check=ConnectionPool.check_connection,
                                    timeout=connect_timeout_s, name="edgeloop-store", open=False)
        self._pool.open(wait=True, timeout=connect_timeout_s)
        self._executor = ThreadPoolExecutor(max_workers=max(1, max_size // 2), thread_name_prefix="pg-writer")
        self._closed = False
        self._lock = threading.Lock()
        if migrate is not None:
            with self._pool.connection() as raw:
                migrate(Conn(raw, POSTGRES))

    def write(self, fn: Callable[[Conn], T], timeout: float | None = None) -> T:
        """Run ``fn(db)`` in a transaction; return once committed (retried on deadlock/serialization failure)."""
        if self._closed:
            raise ClosedError(f"{self.url} is closed")
        for attempt in range(RETRIES):
            with self._pool.connection(timeout=timeout) as raw:
                db = Conn(raw, POSTGRES)
                raw.execute("BEGIN")
                try:
                    value = fn(db)
                except (errors.DeadlockDetected, errors.SerializationFailure) as e:
                    raw.execute("ROLLBACK")
                    if attempt == RETRIES - 1:
                        raise
                    log.info("write retried after %s", type(e).__name__)
                    time.sleep(0.01 * (attempt + 1))
                    continue
                except BaseException:
                    if not raw.closed and raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        raw.execute("ROLLBACK")
                    raise
                raw.execute("COMMIT")
                return value
        raise AssertionError("unreachable")

    def write_async(self, fn: Callable[[Conn], T]) -> "Future[T]":
        if self._closed:
            raise ClosedError(f"{self.url} is closed")
        return self._executor.submit(self.write, fn)

    def read(self) -> "_Reader":
        return _Reader(self._pool)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True)
        self._pool.close()


class _Reader:
    """Reads: each statement on a pooled autocommit connection, rows fetched before it goes back."""

    dialect = POSTGRES

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def execute(self, sql: str, params: Sequence | None = None) -> Rows:
        with self._pool.connection() as raw:
            cur = raw.execute(POSTGRES.translate(sql), list(params) if params is not None else [])
            return Rows(cur.fetchall() if cur.description else [], cur.rowcount)

    @property
    def conn(self) -> "_Reader":
        return self
