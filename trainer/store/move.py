"""Copy a whole store (and its model registry) from one URL to another, then prove the copy.

``copy_store(source_url, target_url)`` opens both (which applies the
migrations, so both have this build's schema), refuses a target that holds
any row unless ``replace=True`` (then it empties it first), copies every
table the migrations made, page by page in primary-key order, one
transaction per page, and then verifies: the same row count per table, the
same content hash per table (every row, in key order, values normalised so
that SQLite and PostgreSQL types hash alike), and every blob's bytes hash to
its key in the target. The registry is copied the same way (on SQLite it is
``registry.db`` beside ``edgeloop.db``; on PostgreSQL it shares the database).
Model files (``data_dir/models``), keys and the image cache are files, not
rows: they stay where they are.

Nothing else should write to either side meanwhile: stop the server,
collectors and workers first (the CLI says so).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .backends import open_database, redact, scheme, sibling_url, sqlite_path
from .migrations import migrate as migrate_store
from .records import StoreError
from .sql import insert_rows

log = logging.getLogger(__name__)
PAGE = 500
# Parents before children (foreign keys); other tables follow by name.
FIRST = ("projects", "blobs", "examples", "models")
SKIP = ("_migrations",)


class MoveError(StoreError):
    """The copy cannot start (non-empty target, same database) or did not verify."""


@dataclass
class TableReport:
    table: str
    rows: int
    hash: str


@dataclass
class MoveReport:
    source: str
    target: str
    tables: list[TableReport] = field(default_factory=list)
    blobs_verified: int = 0

    def lines(self) -> list[str]:
        out = [f"{redact(self.source)} -> {redact(self.target)}"]
        out += [f"  {t.table:<18} {t.rows:>9} rows  sha256 {t.hash[:16]}" for t in self.tables]
        out.append(f"  blobs verified by content: {self.blobs_verified}")
        return out


def registry_url(url: str) -> str | None:
    """Where the registry of the store at ``url`` is (None: a SQLite store without one)."""
    reg = sibling_url(url, "registry.db")
    if scheme(url) == "sqlite" and not sqlite_path(reg).exists():
        return None
    return reg


def copy_store(source: str, target: str, *, replace: bool = False) -> list[MoveReport]:
    """Copy store and registry from ``source`` to ``target``; raise MoveError unless verified."""
    if _same(source, target):
        raise MoveError("source and target are the same database")
    from trainer.publish.registry import migrations as registry_migrations

    pairs = [(source, target, migrate_store)]
    reg = registry_url(source)
    if reg is not None:
        pairs.append((reg, sibling_url(target, "registry.db"), registry_migrations.apply))
    opened = []
    try:
        for src_url, dst_url, mig in pairs:
            opened.append((open_database(src_url, migrate=mig), open_database(dst_url, migrate=mig)))
        owned = [_owned_tables(src, mig) for (src, _dst), (_s, _d, mig) in zip(opened, pairs)]
        for (src, dst), tables in zip(opened, owned):
            full = {t: n for t in tables if (n := _count(dst.read(), t))}
            if full and not replace:
                raise MoveError(f"the target is not empty ({', '.join(f'{t}: {n}' for t, n in full.items())});"
                                " pass --force to replace its contents")
        reports = []
        for (src, dst), tables in zip(opened, owned):
            if replace:
                dst.write(lambda db, ts=tables: [db.execute(f"DELETE FROM {t}") for t in reversed(ts)] and None)
            for t in tables:
                _copy_table(src, dst, t)
            reports.append(_verify(src, dst, tables))
        return reports
    finally:
        for pair in opened:
            for d in pair:
                d.close()


def _same(a: str, b: str) -> bool:
    if scheme(a) == scheme(b) == "sqlite":
        return sqlite_path(a).resolve() == sqlite_path(b).resolve()
    return a == b


def _owned_tables(db, mig) -> list[str]:
    """The tables the migrations ``mig`` make (on PostgreSQL the registry shares the database), parents first."""
    import sqlite3

    from .sql import SQLITE, Conn

    scratch = Conn(sqlite3.connect(":memory:", isolation_level=None), SQLITE)
    try:
        mig(scratch)
        made = set(SQLITE.tables(scratch)) - set(SKIP)
    finally:
        scratch.raw.close()
    names = [t for t in db.dialect.tables(db.read()) if t in made]
    return sorted(names, key=lambda t: (FIRST.index(t) if t in FIRST else len(FIRST), t))


def _count(reader, table: str) -> int:
    return reader.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _pages(db, table: str, columns: list[str]):
    """Rows of ``table`` in primary-key order, ``PAGE`` at a time (keyset paging on a one-column key)."""
    key = db.dialect.primary_key(db.read(), table) or columns
    cols = ", ".join(_quote(c) for c in columns)  # quoted: "user" is a function in PostgreSQL
    order = ", ".join(_quote(c) for c in key)
    if len(key) == 1:
        k = columns.index(key[0])
        last = None
        while True:
            where, args = (f" WHERE {_quote(key[0])} > ?", [last]) if last is not None else ("", [])
            rows = db.read().execute(f"SELECT {cols} FROM {table}{where} ORDER BY {order} LIMIT {PAGE}",
                                     args).fetchall()
            if not rows:
                return
            yield rows
            last = rows[-1][k]
    else:
        offset = 0
        while True:
            rows = db.read().execute(f"SELECT {cols} FROM {table} ORDER BY {order} LIMIT {PAGE} OFFSET {offset}"
                                     ).fetchall()
            if not rows:
                return
            yield rows
            offset += len(rows)


def _copy_table(src, dst, table: str) -> None:
    columns = src.dialect.columns(src.read(), table)
    missing = set(columns) - set(dst.dialect.columns(dst.read(), table))
    if missing:
        raise MoveError(f"target table {table} lacks columns {sorted(missing)}")
    insert = f"INSERT INTO {table} ({', '.join(_quote(c) for c in columns)})"
    n = 0
    for rows in _pages(src, table, columns):
        dst.write(lambda db, rows=rows: insert_rows(db, insert, [tuple(_plain(v) for v in r) for r in rows]))
        n += len(rows)
    if "id" in columns:
        dst.write(lambda db: db.dialect.reset_ids(db, table))
    log.info("copied %s: %d rows", table, n)


def _quote(column: str) -> str:
    return f'"{column}"'


def _plain(v):
    return bytes(v) if isinstance(v, memoryview) else v


def _norm(v) -> bytes:
    """One spelling per value on both backends (bytes by their hash, floats by repr)."""
    if v is None:
        return b"N"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return b"B" + hashlib.sha256(bytes(v)).digest()
    if isinstance(v, bool):
        return b"I" + str(int(v)).encode()
    if isinstance(v, int):
        return b"I" + str(v).encode()
    if isinstance(v, float):
        return b"F" + repr(v).encode()
    return b"T" + str(v).encode()


def table_hash(db, table: str) -> tuple[int, str]:
    """Rows and a hash of their contents that ignores row order (text keys collate differently per backend)."""
    columns = sorted(db.dialect.columns(db.read(), table))
    digests = [hashlib.sha256(b"\x1e".join(_norm(v) for v in r)).digest()
               for rows in _pages(db, table, columns) for r in rows]
    return len(digests), hashlib.sha256(b"".join(sorted(digests))).hexdigest()


def _verify(src, dst, tables: list[str]) -> MoveReport:
    report = MoveReport(src.url, dst.url)
    for t in tables:
        (n_src, h_src), (n_dst, h_dst) = table_hash(src, t), table_hash(dst, t)
        if n_src != n_dst:
            raise MoveError(f"{t}: {n_src} rows in the source, {n_dst} in the target")
        if h_src != h_dst:
            raise MoveError(f"{t}: same {n_src} rows but different content (hash {h_src[:12]} != {h_dst[:12]})")
        report.tables.append(TableReport(t, n_src, h_src))
    if "blobs" in tables:
        for rows in _pages(dst, "blobs", ["sha", "data"]):
            for sha, data in rows:
                if hashlib.sha256(bytes(data)).hexdigest() != sha:
                    raise MoveError(f"blob {sha} does not hash to its key in the target")
                report.blobs_verified += 1
    return report


def describe(url: str) -> list[str]:
    """Rows per table of the store at ``url`` (and its registry), for ``edgeloop store info``."""
    from trainer.publish.registry import migrations as registry_migrations

    out = []
    for u, mig in ((url, migrate_store), (registry_url(url), registry_migrations.apply)):
        if u is None:
            continue
        if scheme(u) == "sqlite" and not Path(sqlite_path(u)).exists():
            out.append(f"{redact(u)}: no database yet")
            continue
        db = open_database(u)
        try:
            out.append(redact(u))
            out += [f"  {t:<18} {_count(db.read(), t):>9} rows" for t in _owned_tables(db, mig)]
        finally:
            db.close()
    return out
