"""Round jobs in the database: enqueue, claim with a lease, heartbeat, cancel and finish across processes.

A round is a row of the store's ``rounds`` table. Its job columns (migration
``0008_round_jobs``): ``active`` (1 while queued or running, else NULL; a
unique index keeps at most one active round on both backends), ``owner``
(the worker holding it), ``lease_until`` and ``heartbeat_at``, ``attempts``,
``cancel_requested``, ``progress`` (the epochs so far, JSON) and ``reason``.

- ``enqueue`` inserts a queued round (``Busy`` when one is active);
  ``enqueue(..., owner=me)`` inserts it already claimed (the embedded server,
  which starts the round in the same call);
- ``claim`` takes the oldest queued round, or a running one whose lease
  expired (its worker died), with ``SELECT ... FOR UPDATE SKIP LOCKED`` on
  PostgreSQL; on SQLite the writer's ``BEGIN IMMEDIATE`` is the lock;
- ``heartbeat`` renews the lease and stores the epochs while the owner still
  holds it, and tells it whether a cancel was requested from any process;
- ``finish`` writes the end, fenced by the owner: a worker whose lease was
  taken over cannot overwrite its successor's round.

Every call is one short transaction through ``Store.write``; no threads here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from .worker import Busy

MAX_ATTEMPTS = 3  # a round whose worker died this many times is failed, not retried again
COLUMNS = "id, state, started, finished, owner, lease_until, attempts, cancel_requested, progress, reason, detail"


@dataclass(frozen=True)
class Job:
    round_id: int
    state: str  # queued | running | done | failed | cancelled
    started: float
    finished: float | None
    owner: str | None
    lease_until: float | None
    attempts: int
    cancel_requested: bool
    epochs: list
    reason: str
    detail: dict

    @classmethod
    def from_row(cls, r: tuple) -> "Job":
        return cls(r[0], r[1], r[2], r[3], r[4], r[5], int(r[6] or 0), bool(r[7]), json.loads(r[8] or "[]"),
                   r[9] or "", json.loads(r[10] or "{}"))


def _unique_violation(e: BaseException) -> bool:
    # sqlite3.IntegrityError and psycopg.errors.UniqueViolation (an IntegrityError) without importing either driver
    return any(c.__name__ == "IntegrityError" for c in type(e).__mro__)


class RoundJobs:
    """The job side of the rounds table for one process (``owner``)."""

    def __init__(self, store, owner: str, lease_s: float = 60.0, clock=time.time) -> None:
        self.store = store
        self.owner = owner
        self.lease_s = lease_s
        self.clock = clock

    # -- reads ------------------------------------------------------------------------------------
    def get(self, round_id: int) -> Job | None:
        r = self.store.db.read().execute(f"SELECT {COLUMNS} FROM rounds WHERE id = ?", [round_id]).fetchone()
        return None if r is None else Job.from_row(r)

    def active(self) -> Job | None:
        r = self.store.db.read().execute(f"SELECT {COLUMNS} FROM rounds WHERE active = 1").fetchone()
        return None if r is None else Job.from_row(r)

    def latest(self) -> Job | None:
        r = self.store.db.read().execute(f"SELECT {COLUMNS} FROM rounds ORDER BY id DESC LIMIT 1").fetchone()
        return None if r is None else Job.from_row(r)

    def last_finished(self) -> Job | None:
        r = self.store.db.read().execute(f"SELECT {COLUMNS} FROM rounds WHERE active IS NULL AND finished IS NOT NULL"
                                         " ORDER BY id DESC LIMIT 1").fetchone()
        return None if r is None else Job.from_row(r)

    def counts(self) -> dict[str, int]:
        return dict(self.store.db.read().execute("SELECT state, count(*) FROM rounds GROUP BY state").fetchall())

    # -- writes -----------------------------------------------------------------------------------
    def enqueue(self, reason: str, started: float | None = None, claim: bool = False) -> int:
        """A new active round (queued, or running under this owner with ``claim``); raises Busy."""
        now = self.clock()
        started = now if started is None else started

        def fn(db) -> int:
            busy = db.execute("SELECT id, state FROM rounds WHERE active = 1").fetchone()
            if busy is not None:
                raise Busy(f"round {busy[0]} is {busy[1]}")
            state, owner, lease = ("running", self.owner, now + self.lease_s) if claim else ("queued", None, None)
            return db.execute(
                "INSERT INTO rounds (started, state, detail, active, owner, lease_until, heartbeat_at, attempts,"
                " reason) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)",
                [started, state, json.dumps({"reason": reason}), owner, lease, now if claim else None,
                 1 if claim else 0, reason[:200]]).lastrowid
        try:
            return self.store.write(fn)
        except Busy:
            raise
        except Exception as e:
            if _unique_violation(e):  # another process enqueued at the same moment (PostgreSQL)
                raise Busy("another round was enqueued at the same time") from e
            raise

    def claim(self) -> Job | None:
        """Take the oldest queued round or one whose lease expired; None when there is none."""
        now = self.clock()

        def fn(db) -> int | None:
            row = db.execute(
                "SELECT id, state, attempts, cancel_requested FROM rounds WHERE active = 1 AND (state = 'queued'"
                " OR (state = 'running' AND coalesce(lease_until, 0) < ?)) ORDER BY id LIMIT 1"
                + db.dialect.for_update(skip_locked=True), [now]).fetchone()
            if row is None:
                return None
            round_id, state, attempts, cancel = row
            if cancel or (attempts or 0) >= MAX_ATTEMPTS:
                why = ("cancelled before a worker took it over" if cancel else
                       f"its worker stopped {attempts} times without finishing it")
                _end(db, round_id, "cancelled" if cancel else "failed", {"error": why}, now)
                return None
            db.execute("UPDATE rounds SET state = 'running', owner = ?, lease_until = ?, heartbeat_at = ?,"
                       " attempts = attempts + 1, progress = '[]' WHERE id = ?",
                       [self.owner, now + self.lease_s, now, round_id])
            return round_id
        round_id = self.store.write(fn)
        return None if round_id is None else self.get(round_id)

    def heartbeat(self, round_id: int, epochs: list | None = None) -> tuple[bool, bool]:
        """Renew the lease (and store ``epochs``); (still the owner, cancel requested)."""
        now = self.clock()

        def fn(db) -> tuple[bool, bool]:
            sets, args = "lease_until = ?, heartbeat_at = ?", [now + self.lease_s, now]
            if epochs is not None:
                sets += ", progress = ?"
                args.append(json.dumps(epochs))
            n = db.execute(f"UPDATE rounds SET {sets} WHERE id = ? AND owner = ? AND active = 1",
                           [*args, round_id, self.owner]).rowcount
            row = db.execute("SELECT cancel_requested FROM rounds WHERE id = ?", [round_id]).fetchone()
            return n == 1, bool(row and row[0])
        return self.store.write(fn)

    def request_cancel(self) -> Job | None:
        """Cancel the active round: a queued one ends now, a running one is flagged for its worker."""
        now = self.clock()

        def fn(db) -> int | None:
            row = db.execute("SELECT id, state FROM rounds WHERE active = 1").fetchone()
            if row is None:
                return None
            if row[1] == "queued":
                _end(db, row[0], "cancelled", {"error": "cancelled before it started"}, now)
            else:
                db.execute("UPDATE rounds SET cancel_requested = 1 WHERE id = ?", [row[0]])
            return row[0]
        round_id = self.store.write(fn)
        return None if round_id is None else self.get(round_id)

    def finish(self, round_id: int, state: str, detail: dict, epochs: list | None = None) -> bool:
        """End the round if it is still active and this owner holds it; False when another worker took or ended it."""
        now = self.clock()

        def fn(db) -> bool:
            held = db.execute("SELECT id FROM rounds WHERE id = ? AND active = 1 AND owner = ?"
                              + db.dialect.for_update(), [round_id, self.owner]).fetchone()
            if held is None:
                return False
            _end(db, round_id, state, detail, now, epochs)
            return True
        return self.store.write(fn)

    def fail_orphans(self) -> int:
        """Rounds "running" without an owner (started before round jobs existed): they cannot finish."""
        detail = json.dumps({"state": "failed", "error": "the server stopped while this round ran"})
        return self.store.write(lambda db: db.execute(
            "UPDATE rounds SET state = 'failed', finished = ?, detail = ?, active = NULL"
            " WHERE state = 'running' AND owner IS NULL", [self.clock(), detail]).rowcount)


def _end(db, round_id: int, state: str, detail: dict, now: float, epochs: list | None = None) -> None:
    # owner is kept (progress reports who ran it); active = NULL is the fence: finish and heartbeat
    # match only active rounds, so no late finish or heartbeat of any worker touches an ended round
    sets = "finished = ?, state = ?, detail = ?, active = NULL, lease_until = NULL"
    args: list = [now, state, json.dumps({"state": state, **detail})]
    if epochs is not None:
        sets += ", progress = ?"
        args.append(json.dumps(epochs))
    db.execute(f"UPDATE rounds SET {sets} WHERE id = ?", [*args, round_id])
