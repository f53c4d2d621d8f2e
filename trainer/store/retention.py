"""Retention: what the store may forget, bounded disk usage, and the hard limit that refuses new samples.

Policies (``RetentionConfig``, the server's ``[retention]`` table):

- **unreviewed samples** (status ``pending_review``): a maximum age, and a
  maximum count and bytes per camera (``agent/camera``) and overall. Over a
  limit, the least valuable go first: the queue's own expected value
  (``ranking.expected_value`` over the same inputs as ``review._ranked``), so
  what the reviewers would see last is what is forgotten;
- **rejected and skipped** items: pruned ``rejected_days`` / ``skipped_days``
  after the decision;
- **audit rows**: pruned ``audit_days`` after they were recorded;
- **never**: labelled examples and any example in the test split (frozen:
  the gate compares models on it). Every delete re-checks both inside its
  transaction, so an item labelled while a pass ran is kept.

``hard_limit_bytes`` (image bytes in the store) is enforced at ingest: while
over it, ``StorageMeter.admit()`` is false and the collector refuses samples
with the dead-letter reason ``store_full``, without a receipt, so agents keep
them in their outboxes and resend later (nothing lost, nothing half-written).

``RetentionPass.run_once`` deletes at most ``max_deletes_per_pass`` examples
(bounded work per pass); ``RetentionThread`` runs it every ``interval_s`` on
its own thread and refreshes the meter. Portable SQL (``trainer.store.sql``).
The thread waits on the store only; a failed pass is logged and retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from . import ranking
from .review import class_counts
from .sql import Conn

log = logging.getLogger(__name__)
DAY = 86_400.0
CATEGORIES = ("labeled", "unreviewed", "rejected", "skipped")
_CATEGORY_OF = {"labeled": "labeled", "pending_review": "unreviewed", "rejected": "rejected", "skipped": "skipped"}
CHUNK = 400  # ids per IN (...) list: under SQLite's parameter limit
DELETABLE = ("pending_review", "rejected", "skipped")


class RetentionConfig(BaseModel):
    """The ``[retention]`` table. Every limit is off (None) unless set; nothing is deleted by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unreviewed_max_age_days: float | None = Field(None, gt=0, le=36_500)
    unreviewed_max_count: int | None = Field(None, ge=0)
    unreviewed_max_bytes: int | None = Field(None, ge=0)
    per_camera_max_count: int | None = Field(None, ge=0)
    per_camera_max_bytes: int | None = Field(None, ge=0)
    rejected_days: float | None = Field(None, gt=0, le=36_500)
    skipped_days: float | None = Field(None, gt=0, le=36_500)
    audit_days: float | None = Field(None, gt=0, le=36_500)  # audit rows older than this are pruned
    # Image bytes in the store above which new samples are refused (dead letter ``store_full``).
    hard_limit_bytes: int | None = Field(None, ge=1)
    interval_s: float = Field(60.0, ge=0.05, le=86_400)
    max_deletes_per_pass: int = Field(1000, ge=1, le=1_000_000)


@dataclass(frozen=True)
class Usage:
    """Examples and image bytes per category, and the store's total image bytes (shared blobs once)."""

    examples: dict[str, int]
    bytes: dict[str, int]
    total_bytes: int
    at: float


@dataclass
class PassResult:
    deleted: dict[str, int] = field(default_factory=dict)  # reason -> examples deleted
    freed_bytes: int = 0
    audit_rows: int = 0  # audit_log rows pruned (audit_days)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def usage(db: Conn, now: float | None = None) -> Usage:
    """Disk usage by category: one grouped query, plus the blobs table's total."""
    examples = dict.fromkeys(CATEGORIES, 0)
    nbytes = dict.fromkeys(CATEGORIES, 0)
    rows = db.execute("SELECT e.status, count(*), coalesce(sum(b.size), 0) FROM examples e"
                      " LEFT JOIN blobs b ON b.sha = e.blob GROUP BY e.status").fetchall()
    for status, n, size in rows:
        cat = _CATEGORY_OF.get(status, status)
        examples[cat] = examples.get(cat, 0) + int(n)
        nbytes[cat] = nbytes.get(cat, 0) + int(size or 0)
    total = db.execute("SELECT coalesce(sum(size), 0) FROM blobs").fetchone()[0]
    return Usage(examples, nbytes, int(total or 0), time.time() if now is None else now)


def delete_examples(db: Conn, ids: list[int], statuses: tuple[str, ...] = DELETABLE) -> tuple[int, int]:
    """Delete these examples (in one write transaction) if still deletable; (deleted, bytes freed).

    Re-checked here: a status in ``statuses`` (never ``labeled``) and not in the test split.
    Children first (prelabels, label history, edge sample), then the example, then blobs no
    example references any more.
    """
    if any(s == "labeled" for s in statuses):
        raise ValueError("labelled examples are never deleted by retention")
    deleted = freed = 0
    marks_s = ",".join("?" * len(statuses))
    lock = db.dialect.for_update()
    for start in range(0, len(ids), CHUNK):
        part = ids[start:start + CHUNK]
        rows = db.execute(f"SELECT id, blob FROM examples WHERE id IN ({','.join('?' * len(part))})"
                          f" AND status IN ({marks_s}) AND (split IS NULL OR split != 'test') ORDER BY id{lock}",
                          [*part, *statuses]).fetchall()
        if not rows:
            continue
        keep = [r[0] for r in rows]
        marks = ",".join("?" * len(keep))
        for table, column in (("prelabels", "example_id"), ("label_events", "example_id"),
                              ("samples", "example_id"), ("examples", "id")):
            db.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", keep)
        shas = sorted({r[1] for r in rows})
        smarks = ",".join("?" * len(shas))
        freed += int(db.execute(f"SELECT coalesce(sum(size), 0) FROM blobs WHERE sha IN ({smarks})"
                                " AND NOT EXISTS (SELECT 1 FROM examples e WHERE e.blob = blobs.sha)",
                                shas).fetchone()[0] or 0)
        db.execute(f"DELETE FROM blobs WHERE sha IN ({smarks})"
                   " AND NOT EXISTS (SELECT 1 FROM examples e WHERE e.blob = blobs.sha)", shas)
        deleted += len(keep)
    return deleted, freed


@dataclass(frozen=True)
class _Pending:
    id: int
    camera: str | None  # "agent/camera"; None for imports
    size: int
    value: float


def _pending(db: Conn, now: float) -> list[_Pending]:
    """Unreviewed items outside the test split, least valuable first (the queue's expected value)."""
    rows = db.execute(
        "SELECT e.id, s.agent_id, s.camera_id, coalesce(b.size, 0), coalesce(s.uncertainty, 0.5), s.predicted_label,"
        " coalesce(s.captured_at, e.created_at) FROM examples e LEFT JOIN samples s ON s.example_id = e.id"
        " LEFT JOIN blobs b ON b.sha = e.blob WHERE e.status = 'pending_review'"
        " AND (e.split IS NULL OR e.split != 'test')").fetchall()
    if not rows:
        return []
    counts = class_counts(db)
    top = max(counts.values(), default=0)
    out = [_Pending(i, f"{a}/{c}" if a is not None else None, int(size),
                    ranking.expected_value(u, counts.get(p, 0), top, now - t))
           for i, a, c, size, u, p, t in rows]
    out.sort(key=lambda x: (x.value, -x.id))  # worst first; among equals the older (smaller id) is kept
    return out


def _over(items: list[_Pending], max_count: int | None, max_bytes: int | None) -> list[int]:
    """Ids to evict from ``items`` (worst first) so that at most max_count / max_bytes remain."""
    count, nbytes = len(items), sum(x.size for x in items)
    evict = []
    for x in items:
        if (max_count is None or count <= max_count) and (max_bytes is None or nbytes <= max_bytes):
            break
        evict.append(x.id)
        count -= 1
        nbytes -= x.size
    return evict


class RetentionPass:
    """One bounded pass of every configured policy over a ``trainer.store.Store``."""

    def __init__(self, store, config: RetentionConfig, clock=time.time) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    def plan(self) -> list[tuple[str, list[int]]]:
        """``(reason, ids)`` in the order they are deleted; read-only."""
        cfg, now, db = self.config, self.clock(), self.store.db.read()
        steps: list[tuple[str, list[int]]] = []
        budget = cfg.max_deletes_per_pass
        for status, days in (("rejected", cfg.rejected_days), ("skipped", cfg.skipped_days)):
            if days is not None:
                ids = [r[0] for r in db.execute(
                    "SELECT id FROM examples WHERE status = ? AND coalesce(labeled_at, created_at) < ?"
                    " AND (split IS NULL OR split != 'test') ORDER BY id LIMIT ?",
                    [status, now - days * DAY, budget]).fetchall()]
                steps.append((f"{status}_age", ids))
                budget -= len(ids)
        if budget <= 0 or not self._unreviewed_limits():
            return [s for s in steps if s[1]]
        pending = _pending(db, now)
        gone: set[int] = set()
        if cfg.unreviewed_max_age_days is not None:
            old = {r[0] for r in db.execute(
                "SELECT id FROM examples WHERE status = 'pending_review' AND created_at < ?",
                [now - cfg.unreviewed_max_age_days * DAY]).fetchall()}
            ids = [x.id for x in pending if x.id in old][:budget]
            steps.append(("unreviewed_age", ids))
            gone.update(ids)
        if cfg.per_camera_max_count is not None or cfg.per_camera_max_bytes is not None:
            by_camera: dict[str, list[_Pending]] = defaultdict(list)
            for x in pending:
                if x.camera is not None and x.id not in gone:
                    by_camera[x.camera].append(x)
            ids = [i for cam in sorted(by_camera)
                   for i in _over(by_camera[cam], cfg.per_camera_max_count, cfg.per_camera_max_bytes)]
            steps.append(("unreviewed_camera_limit", ids))
            gone.update(ids)
        if cfg.unreviewed_max_count is not None or cfg.unreviewed_max_bytes is not None:
            ids = _over([x for x in pending if x.id not in gone], cfg.unreviewed_max_count, cfg.unreviewed_max_bytes)
            steps.append(("unreviewed_limit", ids))
        out, left = [], cfg.max_deletes_per_pass
        for reason, ids in steps:
            ids = ids[:max(left, 0)]
            left -= len(ids)
            if ids:
                out.append((reason, ids))
        return out

    def _unreviewed_limits(self) -> bool:
        c = self.config
        return any(v is not None for v in (c.unreviewed_max_age_days, c.unreviewed_max_count,
                                           c.unreviewed_max_bytes, c.per_camera_max_count, c.per_camera_max_bytes))

    def run_once(self) -> PassResult:
        result = PassResult()
        for reason, ids in self.plan():
            statuses = ("pending_review",) if reason.startswith("unreviewed") else (reason.split("_")[0],)

            def fn(db: Conn, ids=ids, statuses=statuses, reason=reason) -> tuple[int, int]:
                n, freed = delete_examples(db, ids, statuses)
                if n:
                    db.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name)"
                               " DO UPDATE SET value = counters.value + excluded.value", [f"retention_{reason}", n])
                return n, freed
            n, freed = self.store.write(fn)
            if n:
                result.deleted[reason] = result.deleted.get(reason, 0) + n
                result.freed_bytes += freed
        if self.config.audit_days is not None:
            from . import audit

            before = self.clock() - self.config.audit_days * 86400
            result.audit_rows = self.store.write(lambda db: audit.prune(db, before, self.config.max_deletes_per_pass))
        if result.total:
            log.info("retention pass deleted %d example(s) (%s), freed %d bytes", result.total,
                     ", ".join(f"{k}: {v}" for k, v in sorted(result.deleted.items())), result.freed_bytes)
        return result


class StorageMeter:
    """The store's usage as last measured, and whether new samples fit under the hard limit.

    ``admit()`` is called on the collector's batching thread for every batch: it reads a cached
    value (refreshed by ``refresh``, plus the bytes committed since), never the database.
    """

    def __init__(self, hard_limit_bytes: int | None) -> None:
        self.hard_limit = hard_limit_bytes
        self._lock = threading.Lock()
        self.last: Usage | None = None
        self._since = 0  # bytes committed since the last refresh

    def refresh(self, store) -> Usage:
        u = usage(store.db.read())
        with self._lock:
            self.last, self._since = u, 0
        return u

    def added(self, nbytes: int) -> None:
        with self._lock:
            self._since += nbytes

    def total(self) -> int:
        with self._lock:
            return (self.last.total_bytes if self.last else 0) + self._since

    def full(self) -> bool:
        return self.hard_limit is not None and self.total() >= self.hard_limit

    def admit(self) -> bool:
        return not self.full()


class RetentionThread:
    """Every ``interval_s``: measure, run one bounded pass, measure again. ``stop()`` ends it."""

    def __init__(self, store, config: RetentionConfig, meter: StorageMeter, prune: bool = True) -> None:
        self.passes = RetentionPass(store, config)
        self.prune = prune  # False: only measure (a collector whose process does not run retention)
        self.store = store
        self.config = config
        self.meter = meter
        self.last: PassResult | None = None
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "RetentionThread":
        self._tick()  # the hard limit holds from the first batch on
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()
        return self

    def _tick(self) -> None:
        try:
            self.meter.refresh(self.store)
            if not self.prune:
                return
            self.last = self.passes.run_once()
            self.runs += 1
            if self.last.total:
                self.meter.refresh(self.store)
        except Exception:  # a failed pass (store busy, restarting server) must not end retention for good
            log.exception("retention pass failed; retrying in %.0fs", self.config.interval_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            self._tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
