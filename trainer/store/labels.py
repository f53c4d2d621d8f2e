"""Label names: the one rule every entry point applies, and the pending list for names agents report.

A label becomes a folder name (ImageFolder), a line (YOLO ``classes.txt``), XML text (VOC) and a
JSON string (COCO), so a name must be possible in all of them: 1-64 printable characters (no
control, format or line/paragraph separator characters, no lone surrogates), no ``/`` or ``\\``,
not starting with ``.`` (a hidden folder), no leading or trailing space. The server config, the
importers, ingest, the approval API and the exporters all call :func:`label_problem`.

Agents do not create labels. A sample that names a label the project does not know is stored as
usual; the unknown name goes to ``pending_labels`` (at most ``PENDING_MAX`` names, counted beyond
that) until a person approves it (it joins the project's labels) or dismisses it. That holds for a
project with no labels yet too: its labels come from ``[project] labels``, an import, or approvals,
never from whatever the first agent happens to send.
These functions run on the store's writer thread (they take its ``trainer.store.sql.Conn``).
"""

from __future__ import annotations

import json
from collections import Counter

from .records import InvalidLabel, NotFound
from .sql import Conn

MAX_LABEL_LEN = 64
PENDING_MAX = 256


def label_problem(name: object) -> str | None:
    """Why ``name`` cannot be a label in every export format (None when it can)."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_LABEL_LEN:
        return f"a label is 1-{MAX_LABEL_LEN} characters of text"
    if not name.isprintable():  # control and format characters, line/paragraph separators, \x85
        return "a label cannot hold control or line-break characters"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "a label cannot hold a lone surrogate"
    if "/" in name or "\\" in name:
        return "a label cannot hold / or \\ (it names a folder in ImageFolder)"
    if name.startswith("."):
        return "a label cannot start with . (a hidden folder in ImageFolder)"
    if name != name.strip():
        return "a label cannot start or end with a space"
    return None


def check_label(name: object) -> str:
    problem = label_problem(name)
    if problem is not None:
        raise InvalidLabel(f"{problem}: {name!r:.80}")
    return name  # type: ignore[return-value]


def project_labels(db: Conn) -> list[str] | None:
    row = db.execute("SELECT labels FROM projects WHERE id = 1").fetchone()
    return None if row is None else json.loads(row[0])


def from_agents(db: Conn, label_sets: list[tuple[str, ...]], now: float) -> tuple[str, ...]:
    """Account for the labels of newly stored samples (one tuple per sample).

    Unknown valid names are counted into ``pending_labels``, invalid ones only counted. Returns the
    labels the project adopts: always none (a person approves names; kept for the store's caller).
    """
    known = set(project_labels(db) or [])
    unknown: Counter[str] = Counter()
    invalid = 0
    for labels in label_sets:
        for name in dict.fromkeys(labels):
            if name in known:
                continue
            if label_problem(name) is None:
                unknown[name] += 1
            else:
                invalid += 1
    dropped = _add_pending(db, unknown, now)
    _count(db, {"ingest_unknown_labels": sum(unknown.values()), "ingest_invalid_labels": invalid,
                "pending_labels_dropped": dropped})
    return ()


def _add_pending(db: Conn, unknown: Counter[str], now: float) -> int:
    """Upsert counts of unknown names; returns how many samples' names found no room."""
    if not unknown:
        return 0
    have = {r[0] for r in db.execute("SELECT name FROM pending_labels")}
    room = PENDING_MAX - len(have)
    rows, dropped = [], 0
    for name, n in unknown.items():
        if name in have or room > 0:
            room -= name not in have
            rows.append((name, n, now, now, n))
        else:
            dropped += n
    db.conn.executemany(
        "INSERT INTO pending_labels (name, samples, first_seen, last_seen) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET samples = pending_labels.samples + ?, last_seen = excluded.last_seen", rows)
    return dropped


def _count(db: Conn, counts: dict[str, int]) -> None:
    db.conn.executemany(
        "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = counters.value + ?",
        [(k, v, v) for k, v in counts.items() if v])


def pending(db: Conn) -> list[dict]:
    rows = db.execute("SELECT name, samples, first_seen, last_seen FROM pending_labels"
                      " ORDER BY samples DESC, name").fetchall()
    return [{"name": r[0], "samples": r[1], "first_seen": r[2], "last_seen": r[3]} for r in rows]


def approve(db: Conn, name: str) -> None:
    """Move a pending name into the project's labels (NotFound if it is not pending)."""
    check_label(name)
    if db.execute("DELETE FROM pending_labels WHERE name = ?", [name]).rowcount == 0:
        raise NotFound(f"{name!r:.80} is not a pending label")
    current = project_labels(db)
    if current is not None and name not in current:
        db.execute("UPDATE projects SET labels = ? WHERE id = 1", [json.dumps(current + [name])])


def dismiss(db: Conn, name: str) -> None:
    """Forget a pending name (a later sample naming it lists it again)."""
    if db.execute("DELETE FROM pending_labels WHERE name = ?", [name]).rowcount == 0:
        raise NotFound(f"{name!r:.80} is not a pending label")
