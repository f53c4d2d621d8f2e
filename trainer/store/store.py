"""The Store: one project's examples, edge samples, labels and fleet state.

The database comes from a store URL (``trainer.store.backends``): SQLite (one
writer thread, per-thread readers, WAL) or PostgreSQL (a pool, a transaction
per write). Every write is ``Store.write(fn)``: ``fn`` gets a
``trainer.store.sql.Conn`` inside one transaction and the call returns once it
is committed. Image bytes go through ``self.blobs`` (``trainer.store.blobs``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Iterator

from trainer.dataset import SPLITS, Example, LabeledBox

from . import labels as labels_mod
from . import review
from .backends import default_url, open_database
from .blobs import EXT_OF, MEDIA_TYPES, DatabaseBlobs, ImageCache, sha256
from .imaging import BadImage, hash_image, inspect_image
from .migrations import migrate
from .ranking import QueueConfig
from .records import (DeadLetter, IncomingSample, IngestResult, Item, NewExample, NotFound, Project,
                      QueueFilter, StoreError)
from .sql import Conn, insert_rows

TELEMETRY_KEEP = 500  # rows of history per agent
DEAD_LETTER_PREFIX = 256  # bytes of a bad payload kept for diagnosis


class Store:
    """``Store(data_dir)`` opens (and migrates) ``data_dir/edgeloop.db``; ``Store(data_dir, url=...)`` the
    database a store URL names. Image files for the trainer are materialized under ``data_dir/cache``."""

    def __init__(self, data_dir: str | Path, *, url: str | None = None, busy_timeout_ms: int = 10_000,
                 pool_size: int = 8, queue_config: QueueConfig = QueueConfig()) -> None:
        self.data_dir = Path(data_dir)
        self.queue_config = queue_config  # the review queue's cold start (the server's [queue])
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.url = url or default_url(self.data_dir)
        self.cache = ImageCache(self.data_dir / "cache")
        self.db = open_database(self.url, migrate=migrate, busy_timeout_ms=busy_timeout_ms, pool_size=pool_size)
        self.blobs = DatabaseBlobs(self.db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, fn, timeout: float | None = None):
        """Run ``fn(db: trainer.store.sql.Conn)`` in one transaction; return its value once committed."""
        return self.db.write(fn, timeout)

    # -- project ------------------------------------------------------------
    def project(self) -> Project:
        row = self.db.read().execute("SELECT name, task, labels, batch_size FROM projects WHERE id = 1").fetchone()
        if row is None:
            return Project("default", None, (), 40)
        return Project(row[0], row[1], tuple(json.loads(row[2])), row[3])

    def configure_project(self, *, name: str | None = None, task: str | None = None,
                          labels: Iterable[str] = (), batch_size: int | None = None) -> Project:
        """Create or update the project; labels are appended, never removed or reordered."""
        labels = tuple(labels)

        def fn(db: Conn) -> None:
            _ensure_project(db, task, labels)
            if name is not None:
                db.execute("UPDATE projects SET name = ? WHERE id = 1", [name])
            if batch_size is not None:
                db.execute("UPDATE projects SET batch_size = ? WHERE id = 1", [batch_size])
            if task is not None:
                current = db.execute("SELECT task FROM projects WHERE id = 1").fetchone()[0]
                if current != task:
                    raise StoreError(f"the project's task is {current}, not {task}")
        self.write(fn)
        return self.project()

    # -- ingest -------------------------------------------------------------
    def ingest_samples(self, incoming: list[IncomingSample]) -> IngestResult:
        """Store new frames once each (dedup on frame_id); return every frame id now stored."""
        return self.write(lambda db: _ingest(db, self.blobs, incoming))

    def ingest_samples_async(self, incoming: list[IncomingSample]):
        return self.db.write_async(lambda db: _ingest(db, self.blobs, incoming))

    def add_examples(self, examples: list[NewExample], *, task: str | None = None,
                     labels: Iterable[str] = ()) -> int:
        """Insert examples (imports, synthetic); ones whose ``origin`` exists are skipped. Returns added."""
        labels = tuple(labels)

        def fn(db: Conn) -> int:
            _ensure_project(db, task, labels)
            current = db.execute("SELECT task FROM projects WHERE id = 1").fetchone()[0]
            if task is not None and current != task:
                raise StoreError(f"this store holds a {current} project; cannot add {task} examples")
            now = time.time()
            known = _existing(db, "examples", "origin", [e.origin for e in examples if e.origin])
            fresh = [e for e in examples if e.origin is None or e.origin not in known]
            shas = [sha256(e.data) for e in fresh]
            self.blobs.put(db, [(sha, e.data) for sha, e in zip(shas, fresh)])
            added = insert_rows(
                db, "INSERT OR IGNORE INTO examples (blob, media_type, width, height, label, boxes, split, source,"
                " status, labeled_by, labeled_at, round_added, phash, origin, created_at)",
                [(sha, MEDIA_TYPES[e.ext], e.width, e.height, e.label, _boxes_json(e.boxes), e.split,
                  e.source, e.status, e.labeled_by, now if e.status == "labeled" else None, e.round_added,
                  e.phash, e.origin, now) for sha, e in zip(shas, fresh)])
            _incr(db, {f"examples_added_{task or 'unknown'}": added})
            return added
        return self.write(fn)

    def record_dead_letters(self, letters: list[DeadLetter]) -> None:
        self.record_dead_letters_async(letters).result()

    def record_dead_letters_async(self, letters: list[DeadLetter]):
        return self.db.write_async(lambda db: _record_dead_letters(db, letters))

    def record_fleet(self, statuses: list, telemetry: list, received_at: float | None = None) -> None:
        """Store protocol Status and Telemetry messages (agents table + bounded history)."""
        self.record_fleet_async(statuses, telemetry, received_at).result()

    def record_fleet_async(self, statuses: list, telemetry: list, received_at: float | None = None):
        now = received_at or time.time()
        return self.db.write_async(lambda db: _record_fleet(db, statuses, telemetry, now))

    def pending_labels(self) -> list[dict]:
        """Label names agents reported that the project does not know, most frequent first."""
        return labels_mod.pending(self.db.read())

    def approve_label(self, name: str) -> Project:
        """Add a pending name to the project's labels (NotFound if not pending, InvalidLabel)."""
        self.write(lambda db: labels_mod.approve(db, name))
        return self.project()

    def dismiss_label(self, name: str) -> None:
        self.write(lambda db: labels_mod.dismiss(db, name))

    def incr(self, counts: dict[str, int]) -> None:
        self.write(lambda db: _incr(db, counts))

    def fill_phashes(self, limit: int = 200) -> int:
        """Hash up to ``limit`` images stored without a perceptual hash; returns how many were done.

        An edge JPEG whose scan data does not decode (its header passed the protocol's checks) is
        rejected here, so it never reaches a reviewer or the trainer.
        """
        rows = self.db.read().execute(
            "SELECT e.id, e.blob FROM examples e WHERE e.phash IS NULL AND e.status != 'rejected' ORDER BY e.id"
            " LIMIT ?", [limit]).fetchall()
        hashes, bad = [], []
        for example_id, sha in rows:
            try:
                hashes.append((hash_image(self.blobs.get(sha)), example_id))
            except BadImage:
                bad.append(example_id)
        if rows:
            def fn(db: Conn) -> None:
                db.conn.executemany("UPDATE examples SET phash = ? WHERE id = ?", hashes)
                db.conn.executemany("UPDATE examples SET status = 'rejected', labeled_by = 'edgeloop:undecodable'"
                                    " WHERE id = ?", [(i,) for i in bad])
                _incr(db, {"undecodable_images": len(bad)})
            self.write(fn)
        return len(rows)

    # -- reads --------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return dict(self.db.read().execute("SELECT name, value FROM counters").fetchall())

    def dead_letter_counts(self) -> dict[str, int]:
        rows = self.db.read().execute("SELECT reason, count(*) FROM dead_letters GROUP BY reason")
        return dict(rows.fetchall())

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = self.db.read().execute(
            "SELECT topic, reason, detail, size, prefix, at FROM dead_letters ORDER BY id DESC LIMIT ?", [limit])
        return [DeadLetter(*r) for r in rows.fetchall()]

    def count(self, status: str | None = None) -> int:
        if status is None:
            return self.db.read().execute("SELECT count(*) FROM examples").fetchone()[0]
        return self.db.read().execute("SELECT count(*) FROM examples WHERE status = ?", [status]).fetchone()[0]

    def frame_ids(self) -> list[str]:
        return [r[0] for r in self.db.read().execute("SELECT frame_id FROM samples ORDER BY example_id")]

    def sample_blobs(self) -> dict[str, str]:
        """frame_id -> sha256 of the stored JPEG."""
        rows = self.db.read().execute(
            "SELECT s.frame_id, e.blob FROM samples s JOIN examples e ON e.id = s.example_id")
        return dict(rows.fetchall())

    def image(self, example_id: int) -> tuple[bytes, str]:
        """The example's image bytes and media type (NotFound if no such example)."""
        row = self.db.read().execute("SELECT blob, media_type FROM examples WHERE id = ?", [example_id]).fetchone()
        if row is None:
            raise NotFound(f"no example {example_id}")
        return self.blobs.get(row[0]), row[1]

    def blob(self, sha: str) -> bytes:
        return self.blobs.get(sha)

    def image_path(self, sha: str, ext: str, size: int | None = None) -> Path:
        """A file holding this blob (from the cache), for code that needs a path."""
        if size is None:
            size = self.blobs.size(sha)
            if size is None:
                raise NotFound(f"no blob {sha}")
        return self.cache.materialize(sha, ext, size, lambda: self.blob(sha))

    def item(self, example_id: int) -> Item:
        return review.item(self.db.read(), example_id)

    def queue(self, filters: QueueFilter = QueueFilter(), limit: int = 50, offset: int = 0,
              now: float | None = None) -> tuple[list[Item], int]:
        """Items to review, best expected value first, and how many match in all."""
        return review.queue(self.db.read(), filters, limit, offset, time.time() if now is None else now,
                            self.queue_config)

    def queue_depth(self) -> int:
        return self.count("pending_review")

    def label(self, example_id: int, user: str, action: str, label: str | None = None,
              boxes: list[dict] | None = None) -> Item:
        """Apply a review action; raises NotFound, InvalidLabel. Returns the item after commit."""
        self.write(lambda db: review.apply_action(db, example_id, user, action, label, boxes, time.time()))
        return self.item(example_id)

    def undo(self, user: str) -> int:
        """Undo ``user``'s last action still in effect; return its example id (NotFound if none)."""
        return self.write(lambda db: review.undo(db, user, time.time()))

    def stats(self) -> dict:
        return review.stats(self.db.read(), self.project())

    def fleet(self, now: float | None = None) -> list[dict]:
        return review.fleet(self.db.read(), time.time() if now is None else now)

    def label_history(self, example_id: int) -> list[dict]:
        """Every review action on an example, oldest first (who, what, before, after, when, undone when)."""
        rows = self.db.read().execute(
            'SELECT "user", action, before, after, at, undone_at FROM label_events WHERE example_id = ? ORDER BY id',
            [example_id]).fetchall()
        return [{"user": r[0], "action": r[1], "before": json.loads(r[2]), "after": json.loads(r[3]), "at": r[4],
                 "undone_at": r[5]} for r in rows]

    def telemetry_history(self, agent_id: str, limit: int = 100) -> list[dict]:
        rows = self.db.read().execute(
            "SELECT data FROM telemetry WHERE agent_id = ? ORDER BY id DESC LIMIT ?", [agent_id, limit])
        return [json.loads(r[0]) for r in rows.fetchall()]

    # -- for the trainer ----------------------------------------------------
    def examples(self, split: str | None = None) -> list[Example]:
        """Labelled examples (optionally of one split) as the trainer's records."""
        return list(self.iter_examples(split=split))

    def iter_examples(self, split: str | None = None, page: int = 500) -> Iterator[Example]:
        """Labelled examples page by page, so a long export holds no read transaction open."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        last = 0
        where = "e.status = 'labeled' AND e.id > ?" + (" AND e.split = ?" if split else "")
        while True:
            args = [last] + ([split] if split else [])
            rows = self.db.read().execute(
                "SELECT e.id, e.blob, e.media_type, e.width, e.height, e.label, e.boxes, e.split, e.source,"
                " e.round_added, e.labeled_by, e.labeled_at FROM examples e"
                f" WHERE {where} ORDER BY e.id LIMIT {int(page)}", args).fetchall()
            if not rows:
                return
            for r in rows:
                yield self._example(r)
            last = rows[-1][0]

    def _example(self, r: tuple) -> Example:
        boxes = tuple(LabeledBox(b["x1"], b["y1"], b["x2"], b["y2"], b["label"]) for b in json.loads(r[6]))
        path = self.image_path(r[1], EXT_OF[r[2]])
        return Example(id=str(r[0]), image_path=path, label=r[5], boxes=boxes, split=r[7],
                       source=r[8], round_added=r[9],
                       meta={"width": r[3], "height": r[4], "labeled_by": r[10], "labeled_at": r[11]})

    def set_splits(self, splits: dict[str | int, str | None]) -> None:
        bad = {k: v for k, v in splits.items() if v is not None and v not in SPLITS}
        if bad:
            raise ValueError(f"splits must be one of {SPLITS} or None: {bad!r:.200}")
        rows = [(v, int(k)) for k, v in splits.items()]
        self.write(lambda db: db.conn.executemany("UPDATE examples SET split = ? WHERE id = ?", rows) and None)

    def corrected_since_last_round(self) -> int:
        """Edge samples labelled since the last round started (the 30-50 batch that triggers the next).

        Rounds that failed or were cancelled did not use the corrections, so they do not reset the count.
        """
        db = self.db.read()
        row = db.execute("SELECT max(started) FROM rounds WHERE state NOT IN ('failed', 'cancelled')").fetchone()
        since = row[0] or 0.0
        return db.execute("SELECT count(*) FROM examples WHERE source = 'edge' AND status = 'labeled'"
                          " AND labeled_at > ?", [since]).fetchone()[0]


def _boxes_json(boxes: Iterable) -> str:
    return json.dumps([{"x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "label": b.label} for b in boxes])


def _incr(db: Conn, counts: dict[str, int]) -> None:
    db.conn.executemany(
        "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = counters.value + ?",
        [(k, v, v) for k, v in counts.items() if v])


def _ensure_project(db: Conn, task: str | None, labels: tuple[str, ...]) -> None:
    """Create the project row, or add labels and a task it lacks.

    Runs on every ingest batch, so the common case (nothing to change) takes no lock; a change
    re-reads the row locked, since on PostgreSQL another process may be changing it too.
    """
    row = db.execute("SELECT task, labels FROM projects WHERE id = 1").fetchone()
    if row is None:
        fresh = [labels_mod.check_label(x) for x in dict.fromkeys(labels)]
        cur = db.execute("INSERT INTO projects (id, name, task, labels, created_at) VALUES (1, 'default', ?, ?, ?)"
                         " ON CONFLICT (id) DO NOTHING", [task, json.dumps(fresh), time.time()])
        if cur.rowcount == 1:
            return
    elif not _project_changes(row, task, labels):
        return
    row = db.execute("SELECT task, labels FROM projects WHERE id = 1" + db.dialect.for_update()).fetchone()
    current = json.loads(row[1])
    merged = current + [labels_mod.check_label(x) for x in dict.fromkeys(labels) if x not in current]
    if merged != current:
        db.execute("UPDATE projects SET labels = ? WHERE id = 1", [json.dumps(merged)])
    if row[0] is None and task is not None:
        db.execute("UPDATE projects SET task = ? WHERE id = 1", [task])


def _project_changes(row: tuple, task: str | None, labels: tuple[str, ...]) -> bool:
    current = set(json.loads(row[1]))
    return any(x not in current for x in labels) or (row[0] is None and task is not None)


def _prediction(s) -> tuple[dict, str | None]:
    scores = {label: float(p) for label, p in zip(s.labels, s.scores)}
    boxes = [{"x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "score": b.score, "label": s.labels[b.label]}
             for b in s.boxes]
    if s.task == "classification" and scores:
        predicted = max(scores, key=scores.get)
    else:
        predicted = max(boxes, key=lambda b: b["score"])["label"] if boxes else None
    return {"scores": scores, "boxes": boxes}, predicted


def _ingest(db: Conn, blobs, incoming: list[IncomingSample]) -> IngestResult:
    ids = [i.sample.frame_id for i in incoming]
    owner = _owners(db, ids)  # frame_id -> the agent that stored it
    fresh, conflicts = [], []
    for inc in incoming:
        fid, agent = inc.sample.frame_id, inc.sample.agent_id
        if fid not in owner:
            owner[fid] = agent
            fresh.append(inc)
        elif owner[fid] != agent and (agent, fid) not in conflicts:
            # Another agent's frame: receipting it as stored would make this agent drop a frame never kept.
            conflicts.append((agent, fid))
    # One lock order for every writer: two collectors (PostgreSQL) inserting overlapping frames cannot deadlock.
    fresh.sort(key=lambda inc: inc.sample.frame_id)
    blobs.put(db, [(inc.sha, inc.sample.jpeg) for inc in fresh])
    for task in dict.fromkeys(inc.sample.task for inc in fresh):
        _ensure_project(db, task, ())
    ids_new = db.dialect.next_ids(db, "examples", len(fresh))
    fresh = _insert_fresh(db, list(zip(ids_new, fresh)), owner)
    # Agents never add labels: unknown names wait in pending_labels for a person (labels.py).
    adopted = labels_mod.from_agents(db, [tuple(inc.sample.labels) for _, inc in fresh], time.time())
    if adopted:
        _ensure_project(db, None, adopted)
    new = len(fresh)
    for inc in incoming:
        fid, agent = inc.sample.frame_id, inc.sample.agent_id
        if owner[fid] != agent and (agent, fid) not in conflicts:
            conflicts.append((agent, fid))
    stored = tuple(dict.fromkeys(i.sample.frame_id for i in incoming if owner[i.sample.frame_id] == i.sample.agent_id))
    duplicates = sum(1 for i in incoming if owner[i.sample.frame_id] == i.sample.agent_id) - new
    _incr(db, {"ingest_stored": new, "ingest_duplicates": duplicates, "ingest_frame_id_conflicts": len(conflicts)})
    return IngestResult(stored=stored, new=new, duplicates=duplicates, conflicts=tuple(conflicts))


def _insert_fresh(db: Conn, rows: list[tuple[int, IncomingSample]], owner: dict[str, str]) -> list:
    """Insert examples and samples; the rows whose frame this transaction stored.

    The sample insert ignores a frame id another writer committed since ``_owners`` looked (only
    possible with several collectors on PostgreSQL, where the insert waits for that writer's commit):
    the example rows made for those frames are deleted again and ``owner`` learns the real owner.
    """
    insert_rows(db, "INSERT INTO examples (id, blob, media_type, width, height, source, status, phash, created_at,"
                " embedding)",
                [(i, inc.sha, "image/jpeg", inc.sample.width, inc.sample.height, "edge", "pending_review",
                  inc.phash, inc.received_at, inc.sample.embedding or None) for i, inc in rows])
    done = insert_rows(
        db, "INSERT OR IGNORE INTO samples (example_id, frame_id, agent_id, camera_id, model_name, model_version,"
        " task, captured_at, prediction, predicted_label, uncertainty, strategy, reason, received_at)",
        [(i, s.frame_id, s.agent_id, s.camera_id, s.model_name, s.model_version, s.task, s.captured_at,
          json.dumps(pred), predicted, s.uncertainty, s.strategy, s.reason, inc.received_at)
         for i, inc in rows for s in (inc.sample,) for pred, predicted in (_prediction(s),)])
    if done == len(rows):
        return rows
    kept = set()
    for start in range(0, len(rows), 500):
        part = [i for i, _ in rows[start:start + 500]]
        marks = ",".join("?" * len(part))
        kept.update(r[0] for r in db.execute(f"SELECT example_id FROM samples WHERE example_id IN ({marks})", part))
        lost = [i for i in part if i not in kept]
        if lost:
            db.execute(f"DELETE FROM examples WHERE id IN ({','.join('?' * len(lost))})", lost)
    raced = [inc.sample.frame_id for i, inc in rows if i not in kept]
    owner.update(_owners(db, raced))
    db.execute("INSERT INTO counters (name, value) VALUES ('ingest_concurrent_duplicates', ?)"
               " ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value", [len(raced)])
    return [(i, inc) for i, inc in rows if i in kept]


def _owners(db: Conn, frame_ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(frame_ids), 500):
        part = frame_ids[start:start + 500]
        rows = db.execute(f"SELECT frame_id, agent_id FROM samples WHERE frame_id IN ({','.join('?' * len(part))})",
                          part)
        found.update(rows.fetchall())
    return found


def _existing(db: Conn, table: str, column: str, values: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(values), 500):
        part = values[start:start + 500]
        rows = db.execute(f"SELECT {column} FROM {table} WHERE {column} IN ({','.join('?' * len(part))})", part)
        found.update(r[0] for r in rows.fetchall())
    return found


def incoming(sample, received_at: float | None = None) -> IncomingSample:
    """Prepare a decoded protocol.Sample for ``Store.ingest_samples``.

    The perceptual hash is left to ``Store.fill_phashes`` (a background pass): decoding every JPEG
    would be the slowest step of durable ingest.
    """
    return IncomingSample(sample, sha256(sample.jpeg), None, time.time() if received_at is None else received_at)


def new_example(data: bytes, **fields) -> NewExample:
    """A NewExample for JPEG or PNG bytes, with size and hash filled in (raises BadImage)."""
    info = inspect_image(data)
    return NewExample(data=data, ext=info.ext, width=info.width, height=info.height, phash=info.phash, **fields)


def _record_dead_letters(db: Conn, letters: list[DeadLetter]) -> None:
    db.conn.executemany(
        "INSERT INTO dead_letters (topic, reason, detail, size, prefix, at) VALUES (?, ?, ?, ?, ?, ?)",
        [(d.topic[:512], d.reason[:64], d.detail[:1024], d.size, bytes(d.prefix[:DEAD_LETTER_PREFIX]), d.at)
         for d in letters])
    _incr(db, {"dead_letters": len(letters)})


def _record_fleet(db: Conn, statuses: list, telemetry: list, now: float) -> None:
    greatest = db.dialect.greatest
    for s in statuses:
        db.execute(
            "INSERT INTO agents (agent_id, state, software_version, model_name, model_version, model_state,"
            " cameras, cohorts, detail, status_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (agent_id) DO UPDATE SET state = excluded.state,"
            " software_version = excluded.software_version, model_name = excluded.model_name,"
            " model_version = excluded.model_version, model_state = excluded.model_state,"
            " cameras = excluded.cameras, cohorts = excluded.cohorts, detail = excluded.detail,"
            f" status_at = excluded.status_at, last_seen = {greatest('agents.last_seen', 'excluded.last_seen')}"
            # Same stamp, other state: an old "online" redelivered after the will must not revive the agent.
            " WHERE excluded.status_at > coalesce(agents.status_at, 0)"
            " OR (excluded.status_at = agents.status_at AND excluded.state = agents.state)",
            [s.agent_id, s.state, s.software_version, s.model_name, s.model_version, s.model_state,
             json.dumps(list(s.cameras)), json.dumps(list(s.cohorts)), s.detail, s.at, now])
        if s.state == "offline":
            # A last will is stamped when the agent connected, before its "online": older by stamp, but the
            # broker sends it only once the connection is gone, so its arrival counts. Only the state
            # changes: the model facts it carries date from the connect. Redelivered older statuses keep
            # losing to status_at, and the agent's next session says "online" with a newer stamp.
            db.execute(f"UPDATE agents SET state = 'offline', last_seen = {greatest('last_seen', '?')}"
                       " WHERE agent_id = ? AND state = 'online'", [now, s.agent_id])
    for t in telemetry:
        data = json.dumps(t.header())
        db.execute(
            "INSERT INTO agents (agent_id, telemetry, telemetry_at, last_seen) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (agent_id) DO UPDATE SET telemetry = excluded.telemetry,"
            f" telemetry_at = excluded.telemetry_at, last_seen = {greatest('agents.last_seen', 'excluded.last_seen')}",
            [t.agent_id, data, t.at, now])
        db.execute("INSERT INTO telemetry (agent_id, at, received_at, data) VALUES (?, ?, ?, ?)",
                   [t.agent_id, t.at, now, data])
    for agent in {t.agent_id for t in telemetry}:
        db.execute("DELETE FROM telemetry WHERE agent_id = ? AND id <= (SELECT id FROM telemetry WHERE agent_id = ?"
                   " ORDER BY id DESC LIMIT 1 OFFSET ?)", [agent, agent, TELEMETRY_KEEP])
