#!/usr/bin/env python3
"""Back up a live edgeloop data folder, consistently, without stopping the server; restore it.

    python3 deploy/backup-data.py /var/lib/edgeloop /backups/edgeloop-2026-11-29
    python3 deploy/backup-data.py --verify /var/lib/edgeloop /backups/edgeloop-2026-11-29
    python3 deploy/backup-data.py --restore /backups/edgeloop-2026-11-29 /var/lib/edgeloop

The data folder holds two SQLite databases: ``edgeloop.db`` (examples,
labels, review queue, dead letters, and the image bytes themselves, in its
``blobs`` table) and ``registry.db`` (models, announcements), and the
registry's write-once model files under ``models/``. ``cache/`` is left out:
the server rewrites any image file there from ``edgeloop.db`` when needed.
The registry writes a model file (tmp, fsync, rename) before it commits the
row that names it, and never deletes one. So:

1. each database is copied first, with SQLite's online backup API: one step,
   which in WAL mode reads a consistent snapshot and does not block writers;
2. the file folders are copied after: every file a snapshot row names already
   existed when the snapshot was taken, so the copy holds it;
3. every model row of the backed-up registry must name a file the backup
   holds, with the size and sha256 the row records; ``--verify`` also
   recomputes the sha256 of every image in the backed-up ``edgeloop.db``.

``--restore BACKUP DATA`` refuses a data folder that is not empty, checks
each database, copies databases and folders in, and checks the registry's
files again where the restored rows name them. The registry records absolute
paths: restore to the folder the backup was taken from (stop the server first).

Standard library only, so it runs on the host against a docker volume too.
Exit 0 when every check passed, 1 when one failed, 2 for a wrong folder.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import sys
from pathlib import Path

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
SKIPPED_FOLDERS = {"cache"}  # derived from edgeloop.db; rewritten on demand


class CheckFailed(RuntimeError):
    """The backup (or restore) exists but does not hold what its databases say."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


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
        raise CheckFailed(f"{src.name}: the backup failed its integrity check: {result}")
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
            with open(partial, "rb") as f:
                os.fsync(f.fileno())
            os.replace(partial, target)
            copied += 1
    return copied


def is_database(path: Path) -> bool:
    if not path.is_file() or path.name.endswith(SQLITE_SIDE_FILES):
        return False
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def _rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # an older database without this table
        return []
    finally:
        conn.close()


def _model_path(file_path: str, origin: Path) -> Path:
    """Where a registry row's file sits relative to the data folder (``models/<name>/<version>.onnx``)."""
    path = Path(file_path)
    try:
        return path.resolve().relative_to(origin.resolve())
    except ValueError:
        pass
    if "models" in path.parts:  # a data folder given as a relative path, or one since moved
        return Path(*path.parts[len(path.parts) - 1 - path.parts[::-1].index("models"):])
    raise CheckFailed(f"registry.db names {file_path}, which is not under {origin}/models")


def check_models(folder: Path, origin: Path) -> int:
    """Every registry row's model file, found in ``folder`` at its path relative to ``origin``, has the
    size and sha256 the row records; returns how many were checked."""
    registry = folder / "registry.db"
    if not registry.is_file():
        return 0
    rows = _rows(registry, "SELECT name, version, file_path, sha256, size FROM models")
    for name, version, file_path, sha, size in rows:
        rel = _model_path(file_path, origin)
        if not (folder / rel).is_file():
            raise CheckFailed(f"registry.db: {name} v{version}: {rel} is missing")
        got = _sha256(folder / rel)
        if got != (sha, size):
            raise CheckFailed(f"registry.db: {name} v{version}: {rel} has sha256 {got[0][:16]}... and "
                              f"{got[1]} bytes, the registry recorded {sha[:16]}... and {size}")
    return len(rows)


def check_images(folder: Path) -> int:
    """Recompute the sha256 of every image in ``edgeloop.db``'s blobs table; returns how many."""
    db = folder / "edgeloop.db"
    if not db.is_file():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    n = 0
    try:
        for sha, size, data in conn.execute("SELECT sha, size, data FROM blobs"):
            if hashlib.sha256(data).hexdigest() != sha or len(data) != size:
                raise CheckFailed(f"edgeloop.db: image {sha[:16]}... does not match its hash or size")
            n += 1
    except sqlite3.OperationalError:
        return 0  # no blobs table: images were files then, copied with the folders
    finally:
        conn.close()
    return n


def run(data: Path, dest: Path, verify: bool = False) -> int:
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
    for folder in (p for p in entries if p.is_dir() and p.name not in SKIPPED_FOLDERS):
        n = copy_files(folder, dest / folder.name)
        print(f"backup: {folder.name}/ +{n} files")
    _fsync_dir(dest)
    print(f"backup: {check_models(dest, data)} model file(s) match the registry")
    if verify:
        print(f"backup: {check_images(dest)} image(s) match their sha256")
    return 0


def restore(backup: Path, data: Path) -> int:
    if not backup.is_dir() or not any(is_database(p) for p in backup.iterdir()):
        print(f"restore: {backup} is not a backup (no SQLite database)", file=sys.stderr)
        return 2
    if data.exists() and any(data.iterdir()):
        print(f"restore: {data} is not empty; restore into an empty folder (move the old one aside)",
              file=sys.stderr)
        return 2
    data.mkdir(parents=True, exist_ok=True)
    for entry in sorted(backup.iterdir()):
        if is_database(entry):
            backup_database(entry, data / entry.name)  # also an integrity check of the backup's copy
            print(f"restore: {entry.name} ok")
        elif entry.is_dir():
            print(f"restore: {entry.name}/ {copy_files(entry, data / entry.name)} files")
    _fsync_dir(data)
    print(f"restore: {check_models(data, data)} model file(s) match the registry")
    rows = _rows(data / "registry.db", "SELECT file_path FROM models") if (data / "registry.db").is_file() else []
    elsewhere = sorted({r[0] for r in rows if not Path(r[0]).is_file()})
    if elsewhere:
        print(f"restore: registry.db names {len(elsewhere)} model file(s) by a path that does not exist here "
              f"(e.g. {elsewhere[0]}): the server will not serve them until the data folder is back at its "
              "original path", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verify", action="store_true",
                        help="also recompute the sha256 of every image in the backed-up edgeloop.db")
    parser.add_argument("--restore", action="store_true",
                        help="restore: the first folder is a backup, the second an empty data folder")
    parser.add_argument("data", type=Path, help="the server's data folder (store.data_dir); with --restore, "
                                                "the backup folder")
    parser.add_argument("dest", type=Path, help="backup folder (an earlier backup there is updated in place); "
                                                "with --restore, the data folder to fill")
    args = parser.parse_args(argv)
    try:
        return restore(args.data, args.dest) if args.restore else run(args.data, args.dest, args.verify)
    except (OSError, sqlite3.Error, CheckFailed) as e:
        print(f"{'restore' if args.restore else 'backup'}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
