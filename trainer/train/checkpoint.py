"""Self-describing checkpoints, atomic file writes and the reproducibility record."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from protocol.files import atomic_write
from trainer.dataset import Example
from trainer.train.errors import TrainingError

CHECKPOINT_FORMAT = "edgeloop.checkpoint/1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """A crash leaves either the old file or the new one, never half of one (protocol.files)."""
    atomic_write(path, data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def checkpoint_bytes(ckpt: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise TrainingError(f"cannot load checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not an edgeloop checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def dataset_version(examples: Sequence[Example]) -> str:
    """A hash of which examples a round saw and what they said: ids, labels and boxes."""
    h = hashlib.sha256()
    for e in sorted(examples, key=lambda e: e.id):
        boxes = ";".join(f"{b.label}:{b.x1:.5f},{b.y1:.5f},{b.x2:.5f},{b.y2:.5f}" for b in e.boxes)
        h.update(f"{e.id}\t{e.label or ''}\t{boxes}\n".encode())
    return h.hexdigest()[:16]


def code_version() -> str:
    from protocol.version import SOFTWARE_VERSION as __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__
