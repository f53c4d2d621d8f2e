#!/usr/bin/env python3
"""Back up a live edgeloop data folder, consistently, without stopping the server.

    python3 deploy/backup-data.py /var/lib/edgeloop /backups/edgeloop-2026-11-29

The data folder holds SQLite databases (edgeloop.db, registry.db) and folders
of write-once files (blobs/, models/). The server writes each file (tmp, fsync,
rename) before it commits the row that names it, and never deletes one. So:

1. each database is copied first, with SQLite's online backup API: one step,
   which in WAL mode reads a consistent snapshot and does not block writers;
2. the file folders are copied after: every file a snapshot row names already
   existed when the snapshot was taken, so the copy holds it.

The other order could leave a row pointing at a file the backup lacks.
Standard library only, so it runs on the host against a docker volume too.
Exit 0 when every database passed ``PRAGMA integrity_check`` in the backup.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
from pathlib import Path

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_database(src: Path, dest: Path) -> None:
    """Online backup of one SQLite file into ``dest`` (atomically), then check it."""
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=60)
    target = sqlite3.connect(tmp)
    try:
        source.backup(target)  # pages=-1: the whole database from one read snapshot
        target.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
        result = target.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        target.close()
        source.close()
    if result != "ok":
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{src.name}: the backup failed its integrity check: {result}")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def copy_files(src: Path, dest: Path) -> int:
    """Copy write-once files that the backup lacks; returns how many were copied."""
    copied = 0
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        for name in files:
            if name.endswith(".tmp") or name.startswith("."):
                continue  # a write in progress: its row is not committed yet
            target = dest / rel / name
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(name + ".partial")
            shutil.copy2(Path(root) / name, partial)
            os.replace(partial, target)
            copied += 1
    return copied


def is_database(path: Path) -> bool:
    if not path.is_file() or path.name.endswith(SQLITE_SIDE_FILES):
        return False
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def run(data: Path, dest: Path) -> int:
    if not data.is_dir():
        print(f"backup: {data} is not a folder", file=sys.stderr)
        return 2
    dest.mkdir(parents=True, exist_ok=True)
    entries = sorted(data.iterdir())
    databases = [p for p in entries if is_database(p)]
    if not databases:
        print(f"backup: no SQLite database in {data}; is it the server's data folder?", file=sys.stderr)
        return 2
    for db in databases:  # databases first: see the module docstring
        backup_database(db, dest / db.name)
        print(f"backup: {db.name} ok")
    for folder in (p for p in entries if p.is_dir()):
        n = copy_files(folder, dest / folder.name)
        print(f"backup: {folder.name}/ +{n} files")
    _fsync_dir(dest)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="the server's data folder (store.data_dir)")
    parser.add_argument("dest", type=Path, help="backup folder; an earlier backup there is updated in place")
    args = parser.parse_args(argv)
    try:
        return run(args.data, args.dest)
    except (OSError, sqlite3.Error, RuntimeError) as e:
        print(f"backup: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
