"""Content-addressed image files: ``blobs/ab/<sha256>.<ext>``.

Files are written tmp + fsync + rename before the database row that names
them is committed, so a committed row always points at a complete file. A
crash in between leaves at most an unreferenced file, which is harmless and
is reused by the next write of the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png"}
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def sniff_ext(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str, ext: str) -> Path:
        if not _SHA_RE.match(sha) or ext not in MEDIA_TYPES:
            raise ValueError(f"not a blob key: {sha!r}.{ext!r}")
        return self.root / sha[:2] / f"{sha}.{ext}"

    def put(self, data: bytes, ext: str) -> str:
        return self.put_many([(data, ext)])[0]

    def put_many(self, items: list[tuple[bytes, str]]) -> list[str]:
        """Store each (bytes, ext) durably; return their sha256 hex digests."""
        shas, dirs = [], set()
        for data, ext in items:
            sha = hashlib.sha256(data).hexdigest()
            shas.append(sha)
            final = self.path(sha, ext)
            if final.exists() and final.stat().st_size == len(data):
                continue
            final.parent.mkdir(exist_ok=True)
            tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            dirs.add(final.parent)
        # The renames are durable only once their directories are synced.
        for d in dirs:
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return shas
