"""Named schema migrations, each applied once inside its own transaction, on SQLite and PostgreSQL.

The statements are SQLite DDL; ``trainer.store.sql`` maps the types for
PostgreSQL. Applied names are kept in ``_migrations`` (the table sqlite-utils'
migrations used before, so existing databases carry on), one set per owner
(``edgeloop.store``, ``edgeloop.registry``).
"""

from __future__ import annotations

import datetime
from typing import Callable

from .sql import Conn


class Migrations:
    """A named, ordered set of migrations: ``@migrations(name=...)`` registers ``fn(db: Conn)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._steps: list[tuple[str, Callable[[Conn], None]]] = []

    def __call__(self, *, name: str) -> Callable:
        def inner(fn: Callable[[Conn], None]) -> Callable[[Conn], None]:
            if any(n == name for n, _ in self._steps):
                raise ValueError(f"migration {name!r} is already registered in {self.name}")
            self._steps.append((name, fn))
            return fn
        return inner

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self._steps]

    def applied(self, db: Conn) -> list[str]:
        _ensure_table(db)
        return [r[0] for r in db.execute("SELECT name FROM _migrations WHERE migration_set = ? ORDER BY id",
                                         [self.name]).fetchall()]

    def apply(self, db: Conn) -> None:
        """Apply pending migrations on an autocommit connection, each with its record in one transaction."""
        lock = db.dialect.lock_migrations()
        if lock:
            db.execute(lock).fetchall()
        try:
            done = set(self.applied(db))
            for name, fn in self._steps:
                if name in done:
                    continue
                db.execute(db.dialect.begin())
                # Another process (a second collector or worker starting at the same moment on SQLite, which
                # has no migration lock) may have applied it while this one waited for the write lock.
                if db.execute("SELECT 1 FROM _migrations WHERE migration_set = ? AND name = ?",
                              [self.name, name]).fetchone() is not None:
                    db.execute("COMMIT")
                    continue
                try:
                    fn(db)
                    db.execute("INSERT INTO _migrations (migration_set, name, applied_at) VALUES (?, ?, ?)",
                               [self.name, name, str(datetime.datetime.now(datetime.timezone.utc))])
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        finally:
            unlock = db.dialect.unlock_migrations()
            if unlock:
                db.execute(unlock).fetchall()


def _ensure_table(db: Conn) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (id INTEGER PRIMARY KEY, migration_set TEXT, name TEXT,"
               " applied_at TEXT)")
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS idx__migrations_migration_set_name"
               " ON _migrations (migration_set, name)")


migrations = Migrations("edgeloop.store")


@migrations(name="0001_initial")
def _initial(db: Conn) -> None:
    for statement in _INITIAL:
        db.execute(statement)


_INITIAL = (
    """CREATE TABLE projects (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        name TEXT NOT NULL,
        task TEXT CHECK (task IN ('classification', 'detection')),
        labels TEXT NOT NULL DEFAULT '[]',
        batch_size INTEGER NOT NULL DEFAULT 40 CHECK (batch_size BETWEEN 30 AND 50),
        created_at REAL NOT NULL)""",
    """CREATE TABLE examples (
        id INTEGER PRIMARY KEY,
        blob TEXT NOT NULL,
        media_type TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        label TEXT,
        boxes TEXT NOT NULL DEFAULT '[]',
        split TEXT CHECK (split IN ('train', 'val', 'test')),
        source TEXT NOT NULL CHECK (source IN ('edge', 'import', 'synthetic')),
        status TEXT NOT NULL CHECK (status IN ('pending_review', 'labeled', 'rejected', 'skipped')),
        labeled_by TEXT,
        labeled_at REAL,
        round_added INTEGER NOT NULL DEFAULT 0,
        phash INTEGER,
        origin TEXT UNIQUE,
        created_at REAL NOT NULL)""",
    "CREATE INDEX examples_status ON examples (status, id)",
    "CREATE INDEX examples_labeled_at ON examples (labeled_at)",
    "CREATE INDEX examples_blob ON examples (blob)",
    """CREATE TABLE samples (
        example_id INTEGER PRIMARY KEY REFERENCES examples (id),
        frame_id TEXT NOT NULL UNIQUE,
        agent_id TEXT NOT NULL,
        camera_id TEXT NOT NULL,
        model_name TEXT NOT NULL,
        model_version INTEGER NOT NULL,
        task TEXT NOT NULL,
        captured_at REAL NOT NULL,
        prediction TEXT NOT NULL,
        predicted_label TEXT,
        uncertainty REAL NOT NULL,
        strategy TEXT NOT NULL,
        reason TEXT NOT NULL,
        received_at REAL NOT NULL)""",
    "CREATE INDEX samples_filters ON samples (agent_id, camera_id, model_version)",
    """CREATE TABLE label_events (
        id INTEGER PRIMARY KEY,
        example_id INTEGER NOT NULL REFERENCES examples (id),
        "user" TEXT NOT NULL,
        action TEXT NOT NULL,
        before TEXT NOT NULL,
        after TEXT NOT NULL,
        at REAL NOT NULL,
        undone_at REAL)""",
    'CREATE INDEX label_events_user ON label_events ("user", id)',
    """CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        size INTEGER NOT NULL,
        prefix BLOB NOT NULL,
        at REAL NOT NULL)""",
    "CREATE INDEX dead_letters_reason ON dead_letters (reason)",
    """CREATE TABLE agents (
        agent_id TEXT PRIMARY KEY,
        state TEXT NOT NULL DEFAULT 'unknown',
        software_version TEXT NOT NULL DEFAULT '',
        model_name TEXT NOT NULL DEFAULT '',
        model_version INTEGER NOT NULL DEFAULT 0,
        model_state TEXT NOT NULL DEFAULT 'none',
        cameras TEXT NOT NULL DEFAULT '[]',
        cohorts TEXT NOT NULL DEFAULT '[]',
        detail TEXT NOT NULL DEFAULT '',
        status_at REAL,
        telemetry TEXT,
        telemetry_at REAL,
        last_seen REAL NOT NULL)""",
    """CREATE TABLE telemetry (
        id INTEGER PRIMARY KEY,
        agent_id TEXT NOT NULL,
        at REAL NOT NULL,
        received_at REAL NOT NULL,
        data TEXT NOT NULL)""",
    "CREATE INDEX telemetry_agent ON telemetry (agent_id, id)",
    """CREATE TABLE rounds (
        id INTEGER PRIMARY KEY,
        started REAL NOT NULL,
        finished REAL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}')""",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


@migrations(name="0002_image_blobs")
def _image_blobs(db: Conn) -> None:
    # Image bytes moved from fsynced files into the database: one fsync per ingest batch instead of
    # one per image (trainer/store/blobs.py has the measurements).
    db.execute("CREATE TABLE blobs (sha TEXT PRIMARY KEY, size INTEGER NOT NULL, data BLOB NOT NULL)")



@migrations(name="0003_assist_prelabels")
def _assist_prelabels(db: Conn) -> None:
    # A teacher's pre-label is a prediction, never a label: it lives beside the example until a
    # person (or --auto-label) accepts it. One row per example and teacher (model file, card, label
    # map and min score hashed into ``teacher``), so a restart or a re-run adds nothing, and a
    # changed teacher pre-labels again.
    db.execute("""CREATE TABLE prelabels (
        id INTEGER PRIMARY KEY,
        example_id INTEGER NOT NULL REFERENCES examples (id),
        teacher TEXT NOT NULL,
        model_name TEXT NOT NULL,
        model_version INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('done', 'failed')),
        label TEXT,
        score REAL,
        scores TEXT NOT NULL DEFAULT '{}',
        boxes TEXT NOT NULL DEFAULT '[]',
        error TEXT,
        seconds REAL,
        created_at REAL NOT NULL,
        UNIQUE (example_id, teacher))""")
    db.execute("CREATE INDEX prelabels_example ON prelabels (example_id, id)")


@migrations(name="0004_example_embeddings")
def _example_embeddings(db: Conn) -> None:
    # A sample's quantized embedding (protocol/embedding.py: int8 of the L2-normalized vector x 127),
    # NULL when the agent's model has none. The review queue spreads its first page over them.
    db.execute("ALTER TABLE examples ADD COLUMN embedding BLOB")


@migrations(name="0005_pending_labels")
def _pending_labels(db: Conn) -> None:
    # Label names agents reported that the project does not know: a person approves or dismisses
    # them (trainer/store/labels.py); agents never add labels themselves.
    db.execute("""CREATE TABLE pending_labels (
        name TEXT PRIMARY KEY,
        samples INTEGER NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL)""")


@migrations(name="0006_fleet_commands_and_bundles")
def _fleet_commands_and_bundles(db: Conn) -> None:
    # Commands the server sent to agents and how each ended (trainer/fleet/records.py): "sent" until the
    # agent's Status names it in ``answered`` (then "answered", with that Status as JSON), "timed_out" at
    # its deadline, "failed" when the broker did not take it. ``batch`` groups the commands of one
    # group-wide request.
    db.execute("""CREATE TABLE fleet_commands (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        batch TEXT,
        target_group TEXT,
        action TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '{}',
        issued_by TEXT NOT NULL,
        issued_at REAL NOT NULL,
        deadline REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('sent', 'answered', 'timed_out', 'failed')),
        answered_at REAL,
        answer TEXT,
        detail TEXT NOT NULL DEFAULT '')""")
    db.execute("CREATE INDEX fleet_commands_agent ON fleet_commands (agent_id, issued_at)")
    db.execute("CREATE INDEX fleet_commands_batch ON fleet_commands (batch)")
    # Signed configuration bundles per agent group (protocol/bundle.py), every version kept for rollback.
    # ``published_at`` is NULL while the broker has not taken it; removed when nothing was sent, kept (its
    # version never reused) when a publish went unacknowledged (trainer/fleet/bundles.py).
    db.execute("""CREATE TABLE config_bundles (
        grp TEXT NOT NULL,
        version INTEGER NOT NULL,
        settings TEXT NOT NULL,
        bundle BLOB NOT NULL,
        signature BLOB NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        parent_version INTEGER NOT NULL DEFAULT 0,
        published_at REAL,
        PRIMARY KEY (grp, version))""")


@migrations(name="0007_accounts_and_audit")
def _accounts_and_audit(db) -> None:
    # People's accounts and roles (trainer/store/accounts.py): an argon2 password hash, the SHA-256 of the
    # current API token and of the one it replaced (so a rotated token is told apart from a wrong one).
    db.execute("""CREATE TABLE accounts (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('viewer', 'reviewer', 'publisher', 'admin')),
        password_hash TEXT,
        token_hash TEXT UNIQUE,
        previous_token_hash TEXT,
        token_created_at REAL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""")
    db.execute("CREATE INDEX accounts_previous_token ON accounts (previous_token_hash)")
    # Who changed what, when, from where (trainer/store/audit.py): appended, never updated.
    db.execute("""CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        via TEXT NOT NULL,
        client TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        status INTEGER NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}')""")
    db.execute("CREATE INDEX audit_log_actor ON audit_log (actor, id)")
    db.execute("CREATE INDEX audit_log_action ON audit_log (action, id)")


@migrations(name="0008_round_jobs")
def _round_jobs(db: Conn) -> None:
    # Rounds as jobs that worker processes claim with a lease (trainer/rounds/jobs.py). ``active`` is 1 while
    # queued or running, else NULL: the unique index allows one active round on both backends.
    for column in ("active INTEGER", "owner TEXT", "lease_until REAL", "heartbeat_at REAL",
                   "attempts INTEGER NOT NULL DEFAULT 0", "cancel_requested INTEGER NOT NULL DEFAULT 0",
                   "progress TEXT NOT NULL DEFAULT '[]'", "reason TEXT NOT NULL DEFAULT ''"):
        db.execute(f"ALTER TABLE rounds ADD COLUMN {column}")
    db.execute("CREATE UNIQUE INDEX rounds_one_active ON rounds (active)")


def migrate(db: Conn) -> None:
    migrations.apply(db)

