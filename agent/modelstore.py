"""Model versions on disk and the state file that says which one runs.

Layout under ``<data_dir>/models``::

    state.json          {"current": {...}, "previous": {...} | null, "good": {...} | null,
                         "blocked": [versions], "last": {...}}
    v4/model.onnx       a verified download, alone in its directory
    v4/card.json        the card from the signed manifest
    incoming/           partial downloads; wiped at start

``state.json`` is the commit point of an update: it is replaced atomically
(temp file, fsync, rename, fsync of the directory) only after the new version
is downloaded, verified, moved into place and loaded. A crash before that
leaves the old state, so a restart runs the old model; after it, the new one.
The configured model (``model.path``) is the version the agent falls back to
when there is no state file.

``good`` is the last version that passed its health window (or ran before any
window was opened): the version a failed window goes back to. ``prune`` is
always given it to keep, so it stays on disk while anything newer is unproven.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from protocol.files import atomic_write as _atomic_write


@dataclass(frozen=True)
class ModelRef:
    version: int
    path: str  # absolute path of the .onnx file
    card: dict | None = None  # None: card from the config / ONNX metadata / sidecar


@dataclass(frozen=True)
class ModelState:
    current: ModelRef | None = None
    previous: ModelRef | None = None
    blocked: tuple[int, ...] = ()  # versions rolled back from: never installed again
    last: dict = field(default_factory=dict)  # {"version", "result", "detail"} of the last update attempt
    good: ModelRef | None = None  # the last version that passed its health window: the revert target

    def refs(self) -> tuple[ModelRef, ...]:
        """Every version this state still needs on disk."""
        return tuple(r for r in (self.current, self.previous, self.good) if r is not None)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    _atomic_write(path, data)


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_path = root / "state.json"
        self.incoming = root / "incoming"

    def prepare(self) -> None:
        """Create the layout and remove what a crash may have left half-done."""
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir()
        for tmp in self.root.glob("*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)

    def load(self) -> ModelState:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return ModelState()
        ref = lambda d: ModelRef(int(d["version"]), str(d["path"]), d.get("card")) if d else None  # noqa: E731
        return ModelState(ref(raw.get("current")), ref(raw.get("previous")), tuple(raw.get("blocked", ())),
                          dict(raw.get("last", {})), ref(raw.get("good")))

    def save(self, state: ModelState) -> None:
        data = {"current": asdict(state.current) if state.current else None,
                "previous": asdict(state.previous) if state.previous else None,
                "good": asdict(state.good) if state.good else None,
                "blocked": list(state.blocked), "last": state.last}
        atomic_write(self.state_path, json.dumps(data, indent=1).encode())

    def version_dir(self, version: int) -> Path:
        return self.root / f"v{version}"

    def install(self, version: int, downloaded: Path, card: dict) -> Path:
        """Move a verified download into its own directory; return the model path."""
        final = self.version_dir(version)
        staging = self.root / f"v{version}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # a leftover of a version never committed to state
        staging.mkdir()
        os.replace(downloaded, staging / "model.onnx")
        atomic_write(staging / "card.json", json.dumps(card).encode())
        fsync_dir(staging)
        os.replace(staging, final)
        fsync_dir(self.root)
        return final / "model.onnx"

    def prune(self, keep: set[int]) -> None:
        """Delete version directories not in ``keep`` (``ModelState.refs()``: current, previous, good)."""
        for d in self.root.glob("v*"):
            if d.is_dir() and d.name[1:].isdigit() and int(d.name[1:]) not in keep:
                shutil.rmtree(d, ignore_errors=True)
