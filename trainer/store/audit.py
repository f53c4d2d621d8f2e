"""The audit log (migration 0007): who did what, when, from where, and how it ended.

One row per state-changing request (and per login, and per ``edgeloop users``
change): the actor's name, how they authenticated (``session``, ``token``,
``bootstrap``, ``cli``), the client address, an action name from
trainer/server/roles.py, the target (the route's path), the HTTP status, and
a small JSON detail (the request's scalar fields, secrets left out). Control
characters in any text (actor, client, target, detail's keys and values) are
written escaped (``\\x00``): PostgreSQL refuses a NUL, and a row that cannot
be written is a request with no record. Rows are appended; a refused request
(401/403) is merged into its caller's row for the same action of the last
minute (``repeated``), so hammering a route cannot flood the table; rows older
than ``[retention] audit_days`` are pruned by the retention pass (kept forever
unless set). Plain portable SQL; reads page by id, newest first.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

MAX_DETAIL = 2048
MAX_TEXT = 512
COLUMNS = ("id", "at", "actor", "via", "client", "action", "target", "status", "detail")


@dataclass(frozen=True)
class AuditQuery:
    actor: str | None = None
    action: str | None = None
    since: float | None = None
    until: float | None = None
    failed: bool | None = None  # True: only refused/failed (status >= 400); False: only successful
    before_id: int | None = None  # paging: rows older than this id
    limit: int = 50


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape(text) -> str:
    """``text`` with control characters as ``\\xNN`` (and lone surrogates replaced): storable on both backends."""
    text = text if isinstance(text, str) else str(text)
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _escaped(value):
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {escape(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escaped(v) for v in value]
    return value


def record(db, actor: str, via: str, client: str, action: str, target: str = "", status: int = 200,
           detail: dict | None = None, at: float | None = None) -> None:
    """Append one row (inside ``store.write``); control characters escaped (see the module docstring)."""
    actor, via, client, action, target = (escape(v) for v in (actor, via, client, action, target))
    text = json.dumps(_escaped(detail or {}), default=str, ensure_ascii=False)
    if len(text) > MAX_DETAIL:
        text = json.dumps({"truncated": text[:MAX_DETAIL - 100]})
    db.execute("INSERT INTO audit_log (at, actor, via, client, action, target, status, detail)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               [time.time() if at is None else at, actor[:MAX_TEXT], via[:32], client[:MAX_TEXT], action[:64],
                target[:MAX_TEXT], int(status), text])


def record_refusal(db, actor: str, via: str, client: str, action: str, target: str, status: int,
                   detail: dict, window_s: float = 60.0, at: float | None = None) -> None:
    """A refused request: merged into the caller's row for the same action and status of the last
    ``window_s`` (its ``repeated`` count and ``last_at`` go up), else appended (inside ``store.write``)."""
    at = time.time() if at is None else at
    row = db.execute("SELECT id, detail FROM audit_log WHERE actor = ? AND action = ? AND status = ? AND at >= ?"
                     " ORDER BY id DESC LIMIT 1" + db.dialect.for_update(),
                     [escape(actor), escape(action), int(status), at - window_s]).fetchone()
    if row is None:
        record(db, actor, via, client, action, target, status, {**detail, "repeated": 1}, at)
        return
    merged = json.loads(row[1])
    merged["repeated"] = int(merged.get("repeated", 1)) + 1
    merged["last_at"] = at
    db.execute("UPDATE audit_log SET detail = ? WHERE id = ?", [json.dumps(merged, ensure_ascii=False), row[0]])


def prune(db, before: float, limit: int) -> int:
    """Delete up to ``limit`` of the oldest rows recorded before ``before``; how many went."""
    return db.execute("DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < ? ORDER BY id LIMIT ?)",
                      [before, limit]).rowcount


def query(db, q: AuditQuery) -> tuple[list[dict], int]:
    """(rows newest first, total matching the filters without paging)."""
    where, args = [], []
    for column, value in (("actor", q.actor), ("action", q.action)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    if q.since is not None:
        where.append("at >= ?")
        args.append(q.since)
    if q.until is not None:
        where.append("at < ?")
        args.append(q.until)
    if q.failed is not None:
        where.append("status >= 400" if q.failed else "status < 400")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    total = db.execute(f"SELECT count(*) FROM audit_log{clause}", args).fetchone()[0]
    if q.before_id is not None:
        clause += (" AND" if where else " WHERE") + " id < ?"
        args = [*args, q.before_id]
    rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_log{clause} ORDER BY id DESC LIMIT ?",
                      [*args, q.limit]).fetchall()
    out = []
    for row in rows:
        d = dict(zip(COLUMNS, row))
        d["detail"] = json.loads(d["detail"])
        out.append(d)
    return out, total


def actions(db) -> list[str]:
    return [r[0] for r in db.execute("SELECT DISTINCT action FROM audit_log ORDER BY action").fetchall()]
