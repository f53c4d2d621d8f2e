"""The fleet tables of the store (migration 0006): commands and configuration bundles.

Writes go through the store's one writer thread (``store.db.write``, SQL portable through ``db.dialect``); reads
use the calling thread's reader connection. Nothing here talks to MQTT.
"""

from __future__ import annotations

import json
import sqlite3

import sqlite_utils

COMMAND_COLUMNS = ("id", "agent_id", "batch", "target_group", "action", "args", "issued_by", "issued_at",
                   "deadline", "state", "answered_at", "answer", "detail")
BUNDLE_COLUMNS = ("grp", "version", "settings", "created_at", "created_by", "note", "parent_version",
                  "published_at")


def command_row(row: sqlite3.Row | tuple) -> dict:
    d = dict(zip(COMMAND_COLUMNS, row))
    d["args"] = json.loads(d["args"])
    d["answer"] = json.loads(d["answer"]) if d["answer"] else None
    d["group"] = d.pop("target_group")
    return d


def bundle_row(row: sqlite3.Row | tuple) -> dict:
    d = dict(zip(BUNDLE_COLUMNS, row))
    d["settings"] = json.loads(d["settings"])
    d["group"] = d.pop("grp")
    return d


# -- agents ---------------------------------------------------------------------------------------

def known_agent(db: sqlite_utils.Database, agent_id: str) -> bool:
    return db.execute("SELECT 1 FROM agents WHERE agent_id = ?", [agent_id]).fetchone() is not None


def agents_in_group(db: sqlite_utils.Database, group: str) -> list[str]:
    """Agents whose last Status lists ``group`` among its cohorts (their config's ``groups``)."""
    rows = db.execute(f"SELECT agents.agent_id FROM agents, {db.dialect.json_text_items('agents.cohorts', 'g')}"
                      " WHERE g.value = ? ORDER BY agents.agent_id", [group]).fetchall()
    return [r[0] for r in rows]


def groups(db: sqlite_utils.Database) -> dict[str, list[str]]:
    """Every group agents reported, with its agents; plus groups that only have bundles."""
    out: dict[str, list[str]] = {}
    for grp, agent in db.execute(f"SELECT g.value, agents.agent_id FROM agents,"
                                 f" {db.dialect.json_text_items('agents.cohorts', 'g')}"
                                 " ORDER BY g.value, agents.agent_id").fetchall():
        out.setdefault(grp, []).append(agent)
    for (grp,) in db.execute("SELECT DISTINCT grp FROM config_bundles WHERE published_at IS NOT NULL"):
        out.setdefault(grp, [])
    return dict(sorted(out.items()))


# -- commands -------------------------------------------------------------------------------------

def insert_commands(db: sqlite_utils.Database, rows: list[dict]) -> None:
    db.conn.executemany(
        "INSERT INTO fleet_commands (id, agent_id, batch, target_group, action, args, issued_by, issued_at,"
        " deadline, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'sent')",
        [(r["id"], r["agent_id"], r.get("batch"), r.get("group"), r["action"], json.dumps(r.get("args", {})),
          r["issued_by"], r["issued_at"], r["deadline"]) for r in rows])


def mark_failed(db: sqlite_utils.Database, command_id: str, detail: str) -> None:
    db.execute("UPDATE fleet_commands SET state = 'failed', detail = ? WHERE id = ? AND state = 'sent'",
               [detail[:1024], command_id])


def record_answers(db: sqlite_utils.Database, agent_id: str, ids: tuple[str, ...], status: dict,
                   at: float) -> list[str]:
    """Mark the agent's commands named in a Status as answered; the ids that changed.

    Only the agent a command was sent to can answer it; a late answer (after the deadline) still
    counts, with a note. A retained Status seen again changes nothing.
    """
    changed = []
    answer = json.dumps(status)
    for command_id in ids:
        row = db.execute("SELECT state, deadline FROM fleet_commands WHERE id = ? AND agent_id = ?",
                         [command_id, agent_id]).fetchone()
        if row is None or row[0] not in ("sent", "timed_out"):
            continue
        detail = "answered after its deadline" if row[0] == "timed_out" or at > row[1] else ""
        db.execute("UPDATE fleet_commands SET state = 'answered', answered_at = ?, answer = ?, detail = ?"
                   " WHERE id = ?", [at, answer, detail, command_id])
        changed.append(command_id)
    return changed


def expire(db: sqlite_utils.Database, now: float) -> int:
    """Commands past their deadline without an answer become timed_out."""
    cur = db.execute("UPDATE fleet_commands SET state = 'timed_out', detail = 'no answer before the deadline'"
                     " WHERE state = 'sent' AND deadline < ?", [now])
    return cur.rowcount


def commands(db: sqlite_utils.Database, *, command_ids: list[str] | None = None, agent_id: str | None = None,
             batch: str | None = None, limit: int = 50) -> list[dict]:
    where, args = [], []
    if command_ids is not None:
        where.append(f"id IN ({', '.join('?' * len(command_ids))})")
        args += command_ids
    if agent_id is not None:
        where.append("agent_id = ?")
        args.append(agent_id)
    if batch is not None:
        where.append("batch = ?")
        args.append(batch)
    sql = f"SELECT {', '.join(COMMAND_COLUMNS)} FROM fleet_commands"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = db.execute(sql + " ORDER BY issued_at DESC, agent_id LIMIT ?", [*args, limit]).fetchall()
    return [command_row(r) for r in rows]


# -- bundles --------------------------------------------------------------------------------------

def next_bundle_version(db: sqlite_utils.Database, group: str) -> int:
    row = db.execute("SELECT max(version) FROM config_bundles WHERE grp = ?", [group]).fetchone()
    return (row[0] or 0) + 1


def insert_bundle(db: sqlite_utils.Database, group: str, version: int, settings: dict, bundle: bytes,
                  signature: bytes, created_at: float, created_by: str, note: str, parent_version: int) -> None:
    db.execute("INSERT INTO config_bundles (grp, version, settings, bundle, signature, created_at, created_by,"
               " note, parent_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
               [group, version, json.dumps(settings), bundle, signature, created_at, created_by, note,
                parent_version])


def set_published(db: sqlite_utils.Database, group: str, version: int, at: float | None) -> None:
    if at is None:  # the broker never took it: the version is free again, nothing half-applied
        db.execute("DELETE FROM config_bundles WHERE grp = ? AND version = ? AND published_at IS NULL",
                   [group, version])
    else:
        db.execute("UPDATE config_bundles SET published_at = ? WHERE grp = ? AND version = ?", [at, group, version])


def bundles(db: sqlite_utils.Database, group: str, limit: int = 100) -> list[dict]:
    rows = db.execute(f"SELECT {', '.join(BUNDLE_COLUMNS)} FROM config_bundles WHERE grp = ?"
                      " AND published_at IS NOT NULL ORDER BY version DESC LIMIT ?", [group, limit]).fetchall()
    return [bundle_row(r) for r in rows]


def signed_bundle(db: sqlite_utils.Database, group: str, version: int) -> tuple[bytes, bytes] | None:
    row = db.execute("SELECT bundle, signature FROM config_bundles WHERE grp = ? AND version = ?"
                     " AND published_at IS NOT NULL", [group, version]).fetchone()
    return (bytes(row[0]), bytes(row[1])) if row else None

