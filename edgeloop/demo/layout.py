"""What the demo keeps in its data folder, and the configs it builds for each process.

    DATA/
      broker/            broker config and log
      keys/              signing_key.pem (0600), signing_key.pub.pem
      server/            edgeloop.db, registry.db, rounds/, model files
      agents/agent-N/    each agent's config.toml, outbox, models, log
      token              the review UI token (0600), kept so a second run logs in the same way

Everything is derived from the folder, so a second run resumes where the
first stopped.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from protocol.files import atomic_write

MODEL_NAME = "shapes"
LABELS = ("circle", "square", "triangle")
# The synthetic cameras: frames of 128x96, drifting from the style the first
# model was trained on (drift 0) to a new one (drift 1) over DRIFT_FRAMES.
CAMERA_W, CAMERA_H = 128, 96
MAX_SHAPES = 1  # one shape per frame: a task a small CNN learns from a few hundred examples on a CPU
DRIFT_FRAMES = 900


@dataclass(frozen=True)
class DemoConfig:
    data: Path
    agents: int = 2
    source: str | None = None  # a real camera/stream/video for every agent instead of the synthetic one
    auto_label: bool = False
    headless: bool = False
    rounds: int = 2
    json_out: Path | None = None
    http_port: int = 8080
    broker_port: int = 0  # 0: a free port
    batch_size: int = 30
    camera_fps: float = 15.0
    seed: int = 0
    initial_examples: int | None = None  # the first model's data: None = the task's default (150 / 40 frames)
    epochs: int | None = None  # per round: None = the task's default (40 / 25)
    task: str = "classification"  # or "detection" (edgeloop.demo.detection)
    teacher: Path | None = None  # detection: the server's assist model (default: ../shared's YOLOX-Nano)
    teacher_card: Path | None = None  # its card file (None: embedded, a sidecar, or the shipped YOLOX card)


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def server(self) -> Path:
        return self.root / "server"

    @property
    def signing_key(self) -> Path:
        return self.keys / "signing_key.pem"

    @property
    def public_key(self) -> Path:
        return self.keys / "signing_key.pub.pem"

    def agent_dir(self, i: int) -> Path:
        return self.root / "agents" / agent_id(i)

    def make(self) -> None:
        for d in (self.root, self.broker, self.keys, self.server, self.root / "agents"):
            d.mkdir(parents=True, exist_ok=True)


def agent_id(i: int) -> str:
    return f"demo-agent-{i + 1}"


def camera_seed(seed: int, i: int) -> int:
    return 1000 * (seed + 1) + i


def _write_private(path: Path, data: bytes) -> None:
    atomic_write(path, data, 0o600)


def ensure_keys(layout: Layout) -> None:
    """A signing key pair, made once and kept: agents of a resumed demo still trust it."""
    from protocol.manifest import generate_keypair

    if layout.signing_key.exists():
        return
    private, public = generate_keypair()
    _write_private(layout.signing_key, private)
    layout.public_key.write_bytes(public)


def ensure_token(layout: Layout) -> str:
    path = layout.root / "token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    _write_private(path, token.encode())
    return token
