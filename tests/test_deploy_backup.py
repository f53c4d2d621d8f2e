"""deploy/backup-data.py against a data folder that is being written while it runs.

The writer behaves as the server does: a write-once file (tmp, fsync, rename)
first, then the row naming it, committed, in WAL mode. However the backup and
the writer interleave, every row in the backed-up database must name a file
the backup holds.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "backup-data.py"


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    return db


class Writer(threading.Thread):
    """Blob file first, then its row: the server's order."""

    def __init__(self, data: Path) -> None:
        super().__init__(daemon=True)
        self.data, self.stop, self.rows = data, threading.Event(), 0
        self.db = _connect(data / "edgeloop.db")
        self.db.execute("CREATE TABLE IF NOT EXISTS examples (id INTEGER PRIMARY KEY, blob TEXT NOT NULL)")

    def write_one(self) -> None:
        body = os.urandom(2048)
        sha = hashlib.sha256(body).hexdigest()
        final = self.data / "blobs" / sha[:2] / f"{sha}.jpg"
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO examples (blob) VALUES (?)", (f"{sha[:2]}/{sha}.jpg",))
        self.db.execute("COMMIT")
        self.rows += 1

    def run(self) -> None:
        while not self.stop.is_set():
            self.write_one()


def _backup(data: Path, dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(data), str(dest)], capture_output=True, text=True,
                          timeout=120)


def _check(dest: Path) -> int:
    db = sqlite3.connect(dest / "edgeloop.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete", "the backup must stand alone"
        rows = [r[0] for r in db.execute("SELECT blob FROM examples")]
    finally:
        db.close()
    missing = [r for r in rows if not (dest / "blobs" / r).is_file()]
    assert missing == [], f"{len(missing)} rows name files the backup lacks"
    assert not list(dest.rglob("*.tmp")) and not list(dest.rglob("*.partial"))
    return len(rows)


def test_backup_of_a_live_data_folder_is_consistent(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    registry = _connect(data / "registry.db")
    registry.execute("CREATE TABLE models (version INTEGER PRIMARY KEY)")
    registry.execute("INSERT INTO models VALUES (1)")
    writer = Writer(data)
    for _ in range(20):
        writer.write_one()
    writer.start()
    try:
        first = _backup(data, tmp_path / "backup")
        assert first.returncode == 0, first.stderr
        second = _backup(data, tmp_path / "backup")  # an update in place while writes go on
        assert second.returncode == 0, second.stderr
    finally:
        writer.stop.set()
        writer.join(10)
    assert _check(tmp_path / "backup") >= 20
    assert "registry.db ok" in first.stdout
    restored = sqlite3.connect(tmp_path / "backup" / "registry.db")
    assert restored.execute("SELECT version FROM models").fetchall() == [(1,)]
    restored.close()
    registry.close()


def test_backup_of_a_stopped_server_and_refusals(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    writer = Writer(data)
    for _ in range(5):
        writer.write_one()
    writer.db.close()  # no -wal or -shm left: the server is stopped
    done = _backup(data, tmp_path / "backup")
    assert done.returncode == 0, done.stderr
    assert _check(tmp_path / "backup") == 5

    assert _backup(tmp_path / "missing", tmp_path / "b2").returncode == 2
    (tmp_path / "empty").mkdir()
    refused = _backup(tmp_path / "empty", tmp_path / "b3")
    assert refused.returncode == 2 and "no SQLite database" in refused.stderr
