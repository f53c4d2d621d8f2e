"""The one place where SQLite and PostgreSQL differ: dialects and the connection adapter.

Store code (and the fleet, assist, rounds and registry code that writes through
``Store.write``) is written once in SQLite-flavoured SQL with ``?``
placeholders. A ``Conn`` wraps a DB-API connection and its ``Dialect``; the
PostgreSQL dialect rewrites, once per statement text (cached):

- ``?`` placeholders to ``%s`` (and a literal ``%`` to ``%%``), outside quotes;
- ``INSERT OR IGNORE INTO ...`` to ``INSERT INTO ... ON CONFLICT DO NOTHING``;
- in ``CREATE``/``ALTER TABLE``: ``INTEGER PRIMARY KEY`` to an identity column,
  ``INTEGER`` to ``BIGINT`` (64-bit perceptual hashes), ``REAL`` to
  ``DOUBLE PRECISION``, ``BLOB`` to ``BYTEA``.

What cannot be rewritten safely is asked of the dialect by name: JSON array
elements (``json_items``, ``json_field``), ``greatest``, id allocation for the
ingest's multi-row inserts (``next_ids``), ``BEGIN IMMEDIATE`` against a plain
``BEGIN``. No other module tests which backend it runs on. Python ``bool``
parameters are stored as 0/1 on both, and PostgreSQL ``numeric`` results (a
``sum``) come back as ``int`` or ``float``, as SQLite's do.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence


@dataclass(frozen=True)
class Dialect:
    name: str

    def translate(self, sql: str) -> str:
        return sql if self.name == "sqlite" else _pg_translate(sql)

    def begin(self) -> str:
        # SQLite: take the write lock now, so a read-then-write cannot fail on upgrade.
        return "BEGIN IMMEDIATE" if self.name == "sqlite" else "BEGIN"

    def for_update(self, skip_locked: bool = False) -> str:
        """Appended to a SELECT that reads rows it will then write (SQLite's BEGIN IMMEDIATE already locks).

        ``skip_locked``: rows another transaction holds are passed over (a job queue's claim); on SQLite
        the one writer makes every claim exclusive anyway.
        """
        if self.name == "sqlite":
            return ""
        return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"

    def greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})" if self.name == "sqlite" else f"greatest({a}, {b})"

    def json_items(self, column: str, alias: str) -> str:
        """A FROM item: one row per element of the JSON array in ``column``, element as ``alias.value``."""
        if self.name == "sqlite":
            return f"json_each({column}) AS {alias}"
        return f"jsonb_array_elements(({column})::jsonb) AS {alias}(value)"

    def json_text_items(self, column: str, alias: str) -> str:
        """Like ``json_items`` for an array of strings, ``alias.value`` being the text."""
        if self.name == "sqlite":
            return f"json_each({column}) AS {alias}"
        return f"jsonb_array_elements_text(({column})::jsonb) AS {alias}(value)"

    def json_field(self, element: str, key: str) -> str:
        """The text of ``key`` in a JSON object element from ``json_items``."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"not a JSON key this helper takes: {key!r}")
        return f"json_extract({element}, '$.{key}')" if self.name == "sqlite" else f"({element} ->> '{key}')"

    def next_ids(self, conn: "Conn", table: str, n: int) -> list[int]:
        """``n`` fresh ids of ``table``'s ``id`` column for explicit multi-row inserts.

        SQLite has one writer, so the next ids follow the maximum; PostgreSQL takes them from the
        identity sequence, so concurrent collectors never collide.
        """
        if n == 0:
            return []
        if self.name == "sqlite":
            first = conn.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()[0]
            return list(range(first, first + n))
        rows = conn.execute(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, ?)",
                            [n]).fetchall()
        return [r[0] for r in rows]

    def lock_migrations(self) -> str | None:
        """Held while migrating, so two processes starting at once do not both apply one migration."""
        return None if self.name == "sqlite" else "SELECT pg_advisory_lock(7402531)"

    def unlock_migrations(self) -> str | None:
        return None if self.name == "sqlite" else "SELECT pg_advisory_unlock(7402531)"

    # -- schema facts (``trainer.store.move`` copies any table the migrations made) --------------------
    def tables(self, conn: "Conn") -> list[str]:
        if self.name == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        else:
            sql = ("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
                   " AND table_type = 'BASE TABLE' ORDER BY table_name")
        return [r[0] for r in conn.execute(sql).fetchall()]

    def columns(self, conn: "Conn", table: str) -> list[str]:
        if self.name == "sqlite":
            return [r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]
        return [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_schema ="
                                           " current_schema() AND table_name = ? ORDER BY ordinal_position",
                                           [table]).fetchall()]

    def primary_key(self, conn: "Conn", table: str) -> list[str]:
        if self.name == "sqlite":
            rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
            return [r[1] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5])]
        return [r[0] for r in conn.execute(
            "SELECT k.column_name FROM information_schema.table_constraints c JOIN information_schema.key_column_usage k"
            " ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema AND k.table_name = c.table_name"
            " WHERE c.table_schema = current_schema() AND c.table_name = ? AND c.constraint_type = 'PRIMARY KEY'"
            " ORDER BY k.ordinal_position", [table]).fetchall()]

    def reset_ids(self, conn: "Conn", table: str) -> None:
        """After rows were copied in with their ids: the next generated id follows the largest."""
        if self.name == "sqlite":
            return
        seq = conn.execute("SELECT pg_get_serial_sequence(?, 'id')", [table]).fetchone()
        if seq and seq[0]:
            conn.execute(f"SELECT setval('{seq[0]}', coalesce((SELECT max(id) FROM {table}), 0) + 1, false)").fetchall()

    def max_params(self) -> int:
        return 900 if self.name == "sqlite" else 30_000


SQLITE = Dialect("sqlite")
POSTGRES = Dialect("postgresql")

_DDL_TYPES = ((re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
              (re.compile(r"\bINTEGER\b"), "BIGINT"), (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
              (re.compile(r"\bBLOB\b"), "BYTEA"))
_DDL = re.compile(r"^\s*(CREATE\s+TABLE|ALTER\s+TABLE)\b", re.I)
_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.I)


@functools.lru_cache(maxsize=2048)
def _pg_translate(sql: str) -> str:
    if _DDL.match(sql):
        for pattern, repl in _DDL_TYPES:
            sql = pattern.sub(repl, sql)
    ignore = bool(_IGNORE.match(sql))
    if ignore:
        sql = _IGNORE.sub("INSERT INTO", sql, count=1)
    out, quote = [], None
    for ch in sql:
        if quote:
            if ch == quote:
                quote = None
            out.append("%%" if ch == "%" else ch)
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    sql = "".join(out)
    return sql + " ON CONFLICT DO NOTHING" if ignore else sql


class Conn:
    """A DB-API connection speaking the store's SQL; what ``Store.write`` functions receive.

    ``execute`` / ``executemany`` return the driver's cursor (``fetchone``, ``fetchall``, iteration,
    ``rowcount``, ``lastrowid``). ``conn`` is the adapter itself, so ``db.conn.executemany`` (the
    sqlite-utils spelling older code uses) keeps working.
    """

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect

    @property
    def conn(self) -> "Conn":
        return self

    def execute(self, sql: str, params: Sequence | None = None):
        cur = self.raw.execute(self.dialect.translate(sql), list(params) if params is not None else [])
        return cur if self.dialect is SQLITE else _PgCursor(cur)

    def executemany(self, sql: str, rows: Iterable[Sequence]):
        rows = list(rows)
        if self.dialect is SQLITE:
            return self.raw.executemany(sql, rows)
        cur = self.raw.cursor()
        if rows:
            cur.executemany(self.dialect.translate(sql), rows)
        return _PgCursor(cur)


class _PgCursor:
    """A psycopg cursor with SQLite's ``lastrowid`` (the identity value the last INSERT took)."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    @property
    def lastrowid(self) -> int:
        return self._cur.connection.execute("SELECT lastval()").fetchone()[0]

    def fetchone(self):
        return self._cur.fetchone() if self._cur.description else None

    def fetchall(self) -> list:
        return self._cur.fetchall() if self._cur.description else []

    def __iter__(self):
        return iter(self.fetchall())


class Rows:
    """A read's rows, already fetched (a PostgreSQL read returns its connection to the pool at once)."""

    def __init__(self, rows: list, rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self):
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list:
        return list(self._rows)

    def __iter__(self):
        return iter(self._rows)


def insert_rows(db: Conn, insert: str, rows: list[tuple]) -> int:
    """Multi-row INSERTs (``insert`` up to ``VALUES``), chunked under the dialect's parameter limit; rows inserted.

    sqlite3 releases the GIL around every step; with the MQTT thread busy, each release can cost a
    whole switch interval, so a batch of rows as one statement commits several times faster (and
    on PostgreSQL it is one round trip instead of one per row).
    """
    if not rows:
        return 0
    width = len(rows[0])
    per = max(1, db.dialect.max_params() // width)
    done = 0
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        values = ",".join(["(" + ",".join("?" * width) + ")"] * len(chunk))
        done += max(db.execute(f"{insert} VALUES {values}", [v for row in chunk for v in row]).rowcount, 0)
    return done
