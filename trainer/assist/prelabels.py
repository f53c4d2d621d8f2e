"""Pre-labels in the store: which unlabelled examples a teacher still owes, results, accepting one.

A pre-label is a prediction with a source (the teacher's name, version and key) and a score; it never
becomes a label by itself. ``accept`` turns the latest one into the example's label through the
review workflow (so undo, history and round bookkeeping behave as for any label), recorded as the
action ``accept_prelabel``. Writes run on the store's writer thread; reads use the caller's connection.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import sqlite_utils

from trainer.store import InvalidLabel, NotFound, Store
from trainer.store import review

UNLABELLED = ("pending_review", "skipped")
ERROR_MAX = 500


@dataclass(frozen=True)
class Result:
    example_id: int
    state: str  # done | failed
    label: str | None = None
    score: float | None = None
    scores: dict | None = None
    boxes: list | None = None
    error: str | None = None
    seconds: float | None = None


def missing(store: Store, teacher: str, limit: int, exclude: set[int] = frozenset()) -> list[int]:
    """Unlabelled examples without a pre-label from ``teacher``, oldest first."""
    marks = ",".join("?" * len(UNLABELLED))
    rows = store.db.read().execute(
        f"SELECT e.id FROM examples e WHERE e.status IN ({marks}) AND NOT EXISTS (SELECT 1 FROM prelabels p"
        " WHERE p.example_id = e.id AND p.teacher = ?) ORDER BY e.id LIMIT ?",
        [*UNLABELLED, teacher, limit + len(exclude)]).fetchall()
    return [r[0] for r in rows if r[0] not in exclude][:limit]


def unlabelled(store: Store, example_id: int) -> bool:
    row = store.db.read().execute("SELECT status FROM examples WHERE id = ?", [example_id]).fetchone()
    return row is not None and row[0] in UNLABELLED


def save(store: Store, teacher: str, name: str, version: int, results: list[Result]) -> None:
    """Store results (a row that exists already is kept: the work is idempotent) and count them."""
    now = time.time()

    def fn(db: sqlite_utils.Database) -> None:
        db.conn.executemany(
            "INSERT OR IGNORE INTO prelabels (example_id, teacher, model_name, model_version, state, label, score,"
            " scores, boxes, error, seconds, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(r.example_id, teacher, name, version, r.state, r.label, r.score, json.dumps(r.scores or {}),
              json.dumps(r.boxes or []), (r.error or "")[:ERROR_MAX] or None, r.seconds, now) for r in results])
        counts = {"assist_done": sum(r.state == "done" for r in results),
                  "assist_failed": sum(r.state == "failed" for r in results)}
        db.conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = counters.value + ?",
            [(k, v, v) for k, v in counts.items() if v])
    store.write(fn)


def reset(store: Store, teacher: str, *, failed: bool, done: bool) -> int:
    """Forget this teacher's failed and/or done pre-labels of unlabelled examples, so they are redone."""
    states = [s for s, on in (("failed", failed), ("done", done)) if on]
    if not states:
        return 0
    marks = ",".join("?" * len(UNLABELLED))

    def fn(db: sqlite_utils.Database) -> int:
        cur = db.execute(
            f"DELETE FROM prelabels WHERE teacher = ? AND state IN ({','.join('?' * len(states))}) AND example_id IN"
            f" (SELECT id FROM examples WHERE status IN ({marks}))", [teacher, *states, *UNLABELLED])
        return cur.rowcount
    return store.write(fn)


def counts(store: Store, teacher: str) -> dict[str, int]:
    db = store.db.read()
    marks = ",".join("?" * len(UNLABELLED))
    done, failed = db.execute(
        "SELECT coalesce(sum(CASE WHEN state = 'done' THEN 1 ELSE 0 END), 0),"
        " coalesce(sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0) FROM prelabels WHERE teacher = ?",
        [teacher]).fetchone()
    waiting = db.execute(
        f"SELECT count(*) FROM examples e WHERE e.status IN ({marks}) AND NOT EXISTS (SELECT 1 FROM prelabels p"
        " WHERE p.example_id = e.id AND p.teacher = ?)", [*UNLABELLED, teacher]).fetchone()[0]
    return {"done": done, "failed": failed, "waiting": waiting}


class NoPrelabel(InvalidLabel):
    """The example has no usable pre-label to accept."""


def accept(store: Store, example_id: int, user: str) -> None:
    """Make the example's latest successful pre-label its label (raises NotFound, NoPrelabel, InvalidLabel)."""
    def fn(db: sqlite_utils.Database) -> None:
        if db.execute("SELECT 1 FROM examples WHERE id = ?", [example_id]).fetchone() is None:
            raise NotFound(f"no example {example_id}")
        row = db.execute("SELECT label, boxes, model_name, model_version FROM prelabels WHERE example_id = ?"
                         " AND state = 'done' ORDER BY id DESC LIMIT 1", [example_id]).fetchone()
        if row is None:
            raise NoPrelabel(f"example {example_id} has no pre-label from a teacher yet")
        project_task = db.execute("SELECT task FROM projects WHERE id = 1").fetchone()
        boxes = [{k: b[k] for k in ("x1", "y1", "x2", "y2", "label")} for b in json.loads(row[1])]
        if (project_task and project_task[0]) == "classification" and row[0] is None:
            raise NoPrelabel(f"teacher {row[2]} v{row[3]} gave example {example_id} no label above its min_score")
        review.apply_action(db, example_id, user, "label", row[0], boxes, time.time())
        # The event says where the label came from: a person accepting the teacher, not drawing it.
        db.execute("UPDATE label_events SET action = 'accept_prelabel' WHERE id = (SELECT max(id) FROM label_events"
                   " WHERE example_id = ?)", [example_id])
    store.write(fn)


def accept_all(store: Store, user: str, teacher: str | None = None, limit: int = 10_000) -> int:
    """Accept the pre-label of every pending item that has a successful one (``teacher``: only its).

    For ``--auto-label`` runs (the demo's oracle stand-in); an item the project cannot take (a label
    it does not have) is left pending and counted as ``assist_accept_refused``. Returns how many.
    """
    where, args = "", []
    if teacher is not None:
        where, args = " AND p.teacher = ?", [teacher]
    rows = store.db.read().execute(
        "SELECT DISTINCT e.id FROM examples e JOIN prelabels p ON p.example_id = e.id"
        f" WHERE e.status = 'pending_review' AND p.state = 'done'{where} ORDER BY e.id LIMIT ?",
        [*args, limit]).fetchall()
    accepted = refused = 0
    for (example_id,) in rows:
        try:
            accept(store, example_id, user)
            accepted += 1
        except InvalidLabel:
            refused += 1
    if refused:
        store.incr({"assist_accept_refused": refused})
    return accepted
