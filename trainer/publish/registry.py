"""The model registry: every round's model, what it was trained on, and every announcement.

Its own database from the store URL (``trainer.store.backends``): on SQLite
its own file (``registry.db`` in the server's data dir, one writer thread), on
PostgreSQL the store's database (a pool; its tables do not overlap the
store's). Model files are copied into ``models/<name>/<version>.onnx``
beside it when registered, so the registry owns immutable files whose sha256
it has computed itself; the download route serves only those.

States: candidate (registered, not judged) -> rejected (the gate refused; a
person may still publish) | canary (announced to the canary cohort) ->
fleet (announced to every agent) | halted (canaries failed). A fleet model
replaced by a rollback becomes rolled_back; ``published`` is a manual
announcement to a chosen cohort. The current fleet model is the highest
version in state fleet.

Since migration 0002 it also keeps each staged rollout's progress
(``rollouts``: the stage plan, the stage reached, its start, pauses, who was
announced to) so a restarted server resumes watching where it stopped, and
each model's reference confidence histogram on its test split
(``model_references``, for ``trainer.drift``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.store.backends import default_url, open_database, sibling_url
from trainer.store.migrations import Migrations
from trainer.store.sql import Conn

STATES = ("candidate", "rejected", "published", "canary", "fleet", "rolled_back", "halted")
ANNOUNCED = ("published", "canary", "fleet", "rolled_back", "halted")


class RegistryError(Exception):
    """A registry operation is not possible (the message says why)."""


class ModelNotFound(RegistryError):
    pass


migrations = Migrations("edgeloop.registry")


@migrations(name="0001_initial")
def _initial(db: Conn) -> None:
    states = ", ".join(f"'{s}'" for s in STATES)
    db.execute(f"""CREATE TABLE models (
        name TEXT NOT NULL, version INTEGER NOT NULL CHECK (version >= 1),
        parent_version INTEGER NOT NULL DEFAULT 0, source_version INTEGER NOT NULL DEFAULT 0,
        dataset_version TEXT NOT NULL DEFAULT '', task TEXT NOT NULL DEFAULT '', labels TEXT NOT NULL DEFAULT '[]',
        config TEXT NOT NULL DEFAULT '{{}}', metrics TEXT NOT NULL DEFAULT '{{}}',
        per_class TEXT NOT NULL DEFAULT '{{}}', overfit INTEGER NOT NULL DEFAULT 0,
        report_path TEXT NOT NULL DEFAULT '', checkpoint_path TEXT NOT NULL DEFAULT '',
        file_path TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ({states})),
        reason TEXT NOT NULL DEFAULT '', note TEXT NOT NULL DEFAULT '', gate TEXT NOT NULL DEFAULT '{{}}',
        created REAL NOT NULL, updated REAL NOT NULL, PRIMARY KEY (name, version))""")
    db.execute("""CREATE TABLE model_examples (
        name TEXT NOT NULL, version INTEGER NOT NULL, example_id TEXT NOT NULL,
        split TEXT NOT NULL CHECK (split IN ('train', 'val', 'test')),
        PRIMARY KEY (name, version, example_id), FOREIGN KEY (name, version) REFERENCES models (name, version))""")
    db.execute("CREATE INDEX model_examples_example ON model_examples (example_id)")
    db.execute("""CREATE TABLE publications (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL, stage TEXT NOT NULL,
        cohort TEXT NOT NULL, manifest BLOB NOT NULL, signature BLOB NOT NULL, url TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '', at REAL NOT NULL)""")
    db.execute("CREATE INDEX publications_model ON publications (name, version)")
    db.execute("""CREATE TABLE events (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}', at REAL NOT NULL)""")
    db.execute("CREATE INDEX events_model ON events (name, version, id)")


ROLLOUT_STATES = ("running", "paused", "done", "halted", "aborted", "superseded")
ROLLOUT_ACTIVE = ("running", "paused")


@migrations(name="0002_rollouts_and_references")
def _rollouts(db: Conn) -> None:
    states = ", ".join(f"'{s}'" for s in ROLLOUT_STATES)
    db.execute(f"""CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL,
        previous_version INTEGER NOT NULL DEFAULT 0, plan TEXT NOT NULL, stage INTEGER NOT NULL DEFAULT 0,
        stage_started REAL, paused_at REAL, paused_s REAL NOT NULL DEFAULT 0,
        carried TEXT NOT NULL DEFAULT '[]', members TEXT NOT NULL DEFAULT '{{}}',
        state TEXT NOT NULL CHECK (state IN ({states})), reasons TEXT NOT NULL DEFAULT '[]',
        started REAL NOT NULL, updated REAL NOT NULL)""")
    db.execute("CREATE INDEX rollouts_model ON rollouts (name, id)")
    db.execute("""CREATE TABLE model_references (
        name TEXT NOT NULL, version INTEGER NOT NULL, hist TEXT NOT NULL, examples INTEGER NOT NULL,
        at REAL NOT NULL, PRIMARY KEY (name, version))""")


_ROLLOUT_COLUMNS = ("id", "name", "version", "previous_version", "plan", "stage", "stage_started", "paused_at",
                    "paused_s", "carried", "members", "state", "reasons", "started", "updated")
_ROLLOUT_JSON = ("plan", "carried", "members", "reasons")


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: int
    parent_version: int
    source_version: int  # a rollback re-announces this version's file; 0 otherwise
    dataset_version: str
    task: str
    labels: tuple[str, ...]
    config: dict
    metrics: dict
    per_class: dict
    overfit: bool
    report_path: str
    checkpoint_path: str  # the torch checkpoint the next incremental round starts from
    file_path: str
    sha256: str
    size: int
    state: str
    reason: str
    note: str
    gate: dict
    created: float
    updated: float

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["labels"] = list(self.labels)
        return d


@dataclass(frozen=True)
class NewModel:
    """What a finished round hands to ``Registry.register``."""

    name: str
    file: Path
    task: str
    labels: tuple[str, ...]
    parent_version: int = 0
    dataset_version: str = ""
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    per_class: dict = field(default_factory=dict)
    overfit: bool = False
    report_path: str = ""
    checkpoint: Path | None = None
    examples: dict = field(default_factory=dict)  # example id -> split


_COLUMNS = ("name, version, parent_version, source_version, dataset_version, task, labels, config, metrics,"
            " per_class, overfit, report_path, checkpoint_path, file_path, sha256, size, state, reason, note, gate,"
            " created, updated")


def _record(r: tuple) -> ModelRecord:
    return ModelRecord(r[0], r[1], r[2], r[3], r[4], r[5], tuple(json.loads(r[6])), json.loads(r[7]),
                       json.loads(r[8]), json.loads(r[9]), bool(r[10]), r[11], r[12], r[13], r[14], r[15], r[16],
                       r[17], r[18], json.loads(r[19]), r[20], r[21])


def copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy atomically (tmp + fsync + rename) while hashing; return (sha256, size)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            while block := fin.read(1 << 20):
                h.update(block)
                size += len(block)
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
        os.chmod(tmp, 0o444)  # registered files never change
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return h.hexdigest(), size


class Registry:
    """``Registry(data_dir)`` opens (and migrates) ``data_dir/registry.db``; files under ``data_dir/models``."""

    def __init__(self, data_dir: str | Path, *, url: str | None = None, busy_timeout_ms: int = 10_000) -> None:
        """``url``: the store URL (the registry lives beside a SQLite store, inside a PostgreSQL one)."""
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir = self.data_dir / "models"
        self.url = sibling_url(url, "registry.db") if url else default_url(self.data_dir, "registry.db")
        self.db = open_database(self.url, busy_timeout_ms=busy_timeout_ms, migrate=migrations.apply, pool_size=4)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -------------------------------------------------------------
    def register(self, new: NewModel, *, state: str = "candidate", reason: str = "") -> ModelRecord:
        """Copy the model file in, give it the next version (above every version and its parent) and record it."""
        if not new.file.is_file():
            raise RegistryError(f"model file {new.file} does not exist")
        bad = {s for s in new.examples.values() if s not in ("train", "val", "test")}
        if bad:
            raise RegistryError(f"example splits must be train/val/test, got {sorted(bad)}")
        tag = f".incoming-{os.getpid()}-{time.monotonic_ns()}"
        staging = self.models_dir / new.name / f"{tag}.onnx"
        staging_ckpt = self.models_dir / new.name / f"{tag}.pt"
        sha, size = copy_hashed(new.file, staging)
        if new.checkpoint is not None:
            copy_hashed(new.checkpoint, staging_ckpt)

        def fn(db: Conn) -> int:
            version = max(self._max_version(db, new.name), new.parent_version) + 1
            final = self.models_dir / new.name / f"{version}.onnx"
            os.replace(staging, final)
            ckpt = ""
            if new.checkpoint is not None:
                ckpt = str(final.with_suffix(".pt"))
                os.replace(staging_ckpt, ckpt)
            now = time.time()
            db.execute(f"INSERT INTO models ({_COLUMNS}) VALUES ({', '.join('?' * 22)})", [
                new.name, version, new.parent_version, 0, new.dataset_version, new.task, json.dumps(list(new.labels)),
                json.dumps(new.config, default=str), json.dumps(new.metrics), json.dumps(new.per_class),
                int(new.overfit), new.report_path, ckpt, str(final), sha, size, state, reason, "", "{}", now, now])
            db.conn.executemany("INSERT INTO model_examples (name, version, example_id, split) VALUES (?, ?, ?, ?)",
                                [(new.name, version, str(k), v) for k, v in new.examples.items()])
            _event(db, new.name, version, "registered", {"sha256": sha, "size": size, "state": state}, now)
            return version
        try:
            version = self.db.write(fn)
        except BaseException:
            staging.unlink(missing_ok=True)
            staging_ckpt.unlink(missing_ok=True)
            raise
        return self.get(new.name, version)

    def register_rollback(self, name: str, target_version: int, *, state: str = "fleet") -> ModelRecord:
        """A new, higher version carrying ``target_version``'s file and metrics (note "rollback to N")."""
        target = self.get(name, target_version)
        note = f"rollback to {target.version}"

        def fn(db: Conn) -> int:
            version = self._max_version(db, name) + 1
            now = time.time()
            db.execute(f"INSERT INTO models ({_COLUMNS}) VALUES ({', '.join('?' * 22)})", [
                name, version, target.parent_version, target.source_version or target.version,
                target.dataset_version, target.task, json.dumps(list(target.labels)), json.dumps(target.config),
                json.dumps(target.metrics), json.dumps(target.per_class), int(target.overfit), target.report_path,
                target.checkpoint_path, target.file_path, target.sha256, target.size, state, "", note,
                json.dumps(target.gate), now, now])
            db.execute("INSERT INTO model_examples (name, version, example_id, split)"
                       " SELECT name, ?, example_id, split FROM model_examples WHERE name = ? AND version = ?",
                       [version, name, target.version])
            _event(db, name, version, "rollback", {"to": target.version}, now)
            return version
        return self.get(name, self.db.write(fn))

    def set_state(self, name: str, version: int, state: str, reason: str = "", gate: dict | None = None) -> None:
        if state not in STATES:
            raise RegistryError(f"state must be one of {STATES}, got {state!r}")

        def fn(db: Conn) -> None:
            now = time.time()
            cur = db.execute("UPDATE models SET state = ?, reason = ?, updated = ?"
                             + (", gate = ?" if gate is not None else "") + " WHERE name = ? AND version = ?",
                             [state, reason, now] + ([json.dumps(gate)] if gate is not None else []) + [name, version])
            if cur.rowcount != 1:
                raise ModelNotFound(f"no model {name} v{version}")
            _event(db, name, version, "state", {"state": state, "reason": reason}, now)
        self.db.write(fn)

    def record_publication(self, name: str, version: int, stage: str, cohort: dict, manifest: bytes,
                           signature: bytes, url: str, note: str = "") -> None:
        self.db.write(lambda db: db.execute(
            "INSERT INTO publications (name, version, stage, cohort, manifest, signature, url, note, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [name, version, stage, json.dumps(cohort), manifest, signature, url, note, time.time()]))

    def record_event(self, name: str, version: int, kind: str, detail: dict) -> None:
        self.db.write(lambda db: _event(db, name, version, kind, detail, time.time()))

    # -- staged rollouts (trainer.publish.rollout) -----------------------------
    def start_rollout(self, name: str, version: int, previous_version: int, plan: list[dict]) -> int:
        """A new running rollout; any other active one of the same model is superseded."""
        def fn(db: Conn) -> int:
            now = time.time()
            db.execute("UPDATE rollouts SET state = 'superseded', updated = ? WHERE name = ? AND state IN"
                       " ('running', 'paused')", [now, name])
            cur = db.execute("INSERT INTO rollouts (name, version, previous_version, plan, state, started, updated)"
                             " VALUES (?, ?, ?, ?, 'running', ?, ?)",
                             [name, version, previous_version, json.dumps(plan), now, now])
            return cur.lastrowid
        return self.db.write(fn)

    def update_rollout(self, rollout_id: int, **fields: object) -> None:
        bad = set(fields) - set(_ROLLOUT_COLUMNS[5:13])
        if bad:
            raise RegistryError(f"not rollout fields: {sorted(bad)}")
        if "state" in fields and fields["state"] not in ROLLOUT_STATES:
            raise RegistryError(f"rollout state must be one of {ROLLOUT_STATES}, got {fields['state']!r}")
        values = [json.dumps(v) if k in _ROLLOUT_JSON else v for k, v in fields.items()]
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.write(lambda db: db.execute(f"UPDATE rollouts SET {sets}, updated = ? WHERE id = ?",
                                            values + [time.time(), rollout_id]))

    def end_active_rollouts(self, name: str, state: str = "superseded") -> None:
        self.db.write(lambda db: db.execute("UPDATE rollouts SET state = ?, updated = ? WHERE name = ? AND state"
                                            " IN ('running', 'paused')", [state, time.time(), name]))

    def rollouts(self, name: str | None = None, *, active: bool = False, limit: int = 20) -> list[dict]:
        """Rollouts, newest first (``active``: only running or paused ones)."""
        where, args = [], []
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if active:
            where.append("state IN ('running', 'paused')")
        sql = (f"SELECT {', '.join(_ROLLOUT_COLUMNS)} FROM rollouts" + (" WHERE " + " AND ".join(where) if where
                                                                        else "") + " ORDER BY id DESC LIMIT ?")
        rows = self.db.read().execute(sql, args + [limit]).fetchall()
        return [{k: json.loads(v) if k in _ROLLOUT_JSON else v for k, v in zip(_ROLLOUT_COLUMNS, r)} for r in rows]

    # -- drift references (trainer.drift) -------------------------------------
    def set_reference(self, name: str, version: int, hist: dict[str, list[int]], examples: int) -> None:
        """The model's per-class confidence histogram on its test split (label -> counts)."""
        self.get(name, version)
        self.db.write(lambda db: db.execute(
            "INSERT INTO model_references (name, version, hist, examples, at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (name, version) DO UPDATE SET hist = excluded.hist, examples = excluded.examples,"
            " at = excluded.at",
            [name, version, json.dumps({k: list(v) for k, v in hist.items()}), examples, time.time()]))

    def reference(self, name: str, version: int) -> dict | None:
        """{hist, examples, version} of a model, or of the version a rollback re-announced; None if unknown."""
        try:
            record = self.get(name, version)
        except ModelNotFound:
            return None
        for v in (version, record.source_version):
            row = self.db.read().execute("SELECT hist, examples FROM model_references WHERE name = ? AND"
                                         " version = ?", [name, v]).fetchone()
            if row is not None:
                return {"hist": json.loads(row[0]), "examples": row[1], "version": v}
        return None

    @staticmethod
    def _max_version(db: Conn, name: str) -> int:
        return db.execute("SELECT coalesce(max(version), 0) FROM models WHERE name = ?", [name]).fetchone()[0]

    # -- reads --------------------------------------------------------------
    def get(self, name: str, version: int) -> ModelRecord:
        row = self.db.read().execute(f"SELECT {_COLUMNS} FROM models WHERE name = ? AND version = ?",
                                     [name, version]).fetchone()
        if row is None:
            raise ModelNotFound(f"no model {name} v{version}")
        return _record(row)

    def models(self, name: str | None = None) -> list[ModelRecord]:
        """Every model, newest first."""
        where, args = ("WHERE name = ?", [name]) if name else ("", [])
        rows = self.db.read().execute(f"SELECT {_COLUMNS} FROM models {where} ORDER BY name, version DESC", args)
        return [_record(r) for r in rows.fetchall()]

    def names(self) -> list[str]:
        return [r[0] for r in self.db.read().execute("SELECT DISTINCT name FROM models ORDER BY name")]

    def current(self, name: str) -> ModelRecord | None:
        """The fleet model: the highest version in state fleet."""
        row = self.db.read().execute(f"SELECT {_COLUMNS} FROM models WHERE name = ? AND state = 'fleet'"
                                     " ORDER BY version DESC LIMIT 1", [name]).fetchone()
        return _record(row) if row else None

    def latest_version(self, name: str) -> int:
        return self._max_version(self.db.read(), name)

    def servable(self, name: str, version: int) -> ModelRecord | None:
        """The model if it was ever announced (only those files are downloadable)."""
        db = self.db.read()
        if db.execute("SELECT 1 FROM publications WHERE name = ? AND version = ? LIMIT 1",
                      [name, version]).fetchone() is None:
            return None
        return self.get(name, version)

    def publications(self, name: str | None = None, version: int | None = None) -> list[dict]:
        where, args = [], []
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if version is not None:
            where.append("version = ?")
            args.append(version)
        sql = ("SELECT id, name, version, stage, cohort, manifest, signature, url, note, at FROM publications"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id")
        return [{"id": r[0], "name": r[1], "version": r[2], "stage": r[3], "cohort": json.loads(r[4]),
                 "manifest": bytes(r[5]), "signature": bytes(r[6]), "url": r[7], "note": r[8], "at": r[9]}
                for r in self.db.read().execute(sql, args).fetchall()]

    def events(self, name: str, version: int | None = None) -> list[dict]:
        sql = "SELECT version, kind, detail, at FROM events WHERE name = ?" + (" AND version = ?" if version else "")
        rows = self.db.read().execute(sql + " ORDER BY id", [name] + ([version] if version else []))
        return [{"version": r[0], "kind": r[1], "detail": json.loads(r[2]), "at": r[3]} for r in rows.fetchall()]

    # -- lineage ------------------------------------------------------------
    def examples_of(self, name: str, version: int) -> dict[str, str]:
        """Example id -> split, for every example the model was trained and judged on."""
        self.get(name, version)
        rows = self.db.read().execute("SELECT example_id, split FROM model_examples WHERE name = ? AND version = ?"
                                      " ORDER BY example_id", [name, version])
        return dict(rows.fetchall())

    def models_using(self, example_id: str | int) -> list[tuple[str, int, str]]:
        """(model name, version, split) of every model whose round included the example."""
        rows = self.db.read().execute("SELECT name, version, split FROM model_examples WHERE example_id = ?"
                                      " ORDER BY name, version", [str(example_id)])
        return [tuple(r) for r in rows.fetchall()]


def _event(db: Conn, name: str, version: int, kind: str, detail: dict, at: float) -> None:
    db.execute("INSERT INTO events (name, version, kind, detail, at) VALUES (?, ?, ?, ?, ?)",
               [name, version, kind, json.dumps(detail, default=str), at])

