"""Every message agents and the server exchange, as frozen dataclasses.

Each class has ``KIND`` (its envelope kind), ``header()`` (the msgpack map it
travels as) and ``from_header()`` (the validating reader). Unknown header keys
are ignored, so a newer minor version can add optional fields without
breaking older receivers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .embedding import MAX_EMBEDDING_DIM
from .errors import ProtocolError
from .fields import Fields, has_control
from .jpeg import jpeg_size
from .topics import FRAME_ID_RE, ID_RE

TASKS = ("classification", "detection")
MAX_LABELS = 1000
MAX_BOXES = 1000
MAX_IDS_PER_RECEIPT = 1024
MAX_IMAGE_SIDE = 16384
MAX_JPEG = 8 * 1024 * 1024
EPOCH_MAX = 2.0**33  # seconds since 1970: anything later is a bug, not a date
HIST_BINS = 10
MAX_TAGS = 32
MAX_ANSWERED = 32
MAX_CAMERAS = 64  # telemetry.camera_hist entries
MAX_BUNDLE = 64 * 1024


@dataclass(frozen=True)
class Box:
    """A detection in normalized [0, 1] image coordinates."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    label: int

    def to_list(self) -> list:
        return [self.x1, self.y1, self.x2, self.y2, self.score, self.label]


def _boxes(f: Fields, n_labels: int) -> tuple[Box, ...]:
    out = []
    for i, item in enumerate(f.array("boxes", MAX_BOXES)):
        if not isinstance(item, (list, tuple)) or len(item) != 6:
            raise ProtocolError("bad_field", f"sample.boxes[{i}] must be [x1, y1, x2, y2, score, label]")
        sub = Fields(f"sample.boxes[{i}]", dict(zip(("x1", "y1", "x2", "y2", "score", "label"), item)))
        x1, y1, x2, y2 = (sub.number(k, 0.0, 1.0) for k in ("x1", "y1", "x2", "y2"))
        if x2 < x1 or y2 < y1:
            raise ProtocolError("bad_field", f"sample.boxes[{i}] has x2 < x1 or y2 < y1")
        out.append(Box(x1, y1, x2, y2, sub.number("score", 0.0, 1.0), sub.integer("label", 0, n_labels - 1)))
    return tuple(out)


@dataclass(frozen=True)
class Sample:
    """A frame an agent picked, with the prediction that made it interesting."""

    KIND: ClassVar[str] = "sample"
    agent_id: str
    camera_id: str
    frame_id: str
    captured_at: float
    model_name: str
    model_version: int
    task: str
    labels: tuple[str, ...]
    scores: tuple[float, ...]  # classification: one per label
    boxes: tuple[Box, ...]  # detection: every box the model returned
    uncertainty: float
    strategy: str
    reason: str
    width: int
    height: int
    jpeg: bytes = field(repr=False)
    embedding: bytes = field(default=b"", repr=False)  # protocol.embedding.quantize_embedding; b"": none

    def header(self) -> dict:
        extra = {"embedding": self.embedding} if self.embedding else {}  # absent rather than empty
        return {**extra,
            "agent_id": self.agent_id, "camera_id": self.camera_id, "frame_id": self.frame_id,
            "captured_at": self.captured_at, "model_name": self.model_name,
            "model_version": self.model_version, "task": self.task, "labels": list(self.labels),
            "scores": list(self.scores), "boxes": [b.to_list() for b in self.boxes],
            "uncertainty": self.uncertainty, "strategy": self.strategy, "reason": self.reason,
            "width": self.width, "height": self.height,
        }

    def body(self) -> bytes:
        return self.jpeg

    @classmethod
    def from_header(cls, f: Fields, body: bytes) -> "Sample":
        task = f.text("task", choices=TASKS)
        labels = f.text_list("labels", MAX_LABELS)
        if not labels:
            raise ProtocolError("bad_field", "sample.labels must not be empty")
        scores = f.number_list("scores", MAX_LABELS, 0.0, 1.0)
        if task == "classification" and len(scores) != len(labels):
            raise ProtocolError("bad_field", f"sample.scores has {len(scores)} entries for {len(labels)} labels")
        width = f.integer("width", 1, MAX_IMAGE_SIDE)
        height = f.integer("height", 1, MAX_IMAGE_SIDE)
        if len(body) > MAX_JPEG:
            raise ProtocolError("image_too_large", f"{len(body)} bytes > {MAX_JPEG}")
        if jpeg_size(body) != (width, height):
            raise ProtocolError("size_mismatch", f"JPEG is {jpeg_size(body)}, header says {(width, height)}")
        return cls(
            agent_id=f.text("agent_id", pattern=ID_RE), camera_id=f.text("camera_id", pattern=ID_RE),
            frame_id=f.text("frame_id", pattern=FRAME_ID_RE),
            captured_at=f.number("captured_at", 0.0, EPOCH_MAX),
            model_name=f.text("model_name", pattern=ID_RE), model_version=f.integer("model_version", 0, 2**31),
            task=task, labels=labels, scores=scores, boxes=_boxes(f, len(labels)),
            uncertainty=f.number("uncertainty", 0.0, 1e6), strategy=f.text("strategy", 64),
            reason=f.text("reason", 512), width=width, height=height, jpeg=body,
            embedding=f.blob("embedding", MAX_EMBEDDING_DIM) if "embedding" in f.header else b"",
        )


@dataclass(frozen=True)
class Receipt:
    """The collector's word that these frames are durably stored (or refused for good)."""

    KIND: ClassVar[str] = "receipt"
    stored: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...] = ()  # (frame_id, reason): never resend these
    at: float = 0.0

    def header(self) -> dict:
        return {"stored": list(self.stored), "rejected": [list(r) for r in self.rejected], "at": self.at}

    @classmethod
    def from_header(cls, f: Fields, body: bytes) -> "Receipt":
        stored = f.text_list("stored", MAX_IDS_PER_RECEIPT, 192, FRAME_ID_RE)
        rejected = []
        for i, item in enumerate(f.array("rejected", MAX_IDS_PER_RECEIPT, ())):
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item)
                    and FRAME_ID_RE.match(item[0]) and len(item[1]) <= 256):
                raise ProtocolError("bad_field", f"receipt.rejected[{i}] must be [frame_id, reason]")
            rejected.append((item[0], item[1]))
        return cls(stored=stored, rejected=tuple(rejected), at=f.number("at", 0.0, EPOCH_MAX, 0.0))


@dataclass(frozen=True)
class Status:
    """An agent's presence and model state; retained, and its last will says offline."""

    KIND: ClassVar[str] = "status"
    agent_id: str
    state: str  # online | offline
    at: float
    software_version: str = ""
    model_name: str = ""
    model_version: int = 0
    model_state: str = "none"  # none | ok | failed | reverted
    cameras: tuple[str, ...] = ()
    cohorts: tuple[str, ...] = ()
    detail: str = ""  # last error or update result, for people
    provider: str = ""  # onnxruntime execution provider the model runs on (after fall-backs): cpu, cuda, ...
    tags: dict[str, str] = field(default_factory=dict)  # since minor 2: site, camera type... from the config
    answered: tuple[str, ...] = ()  # since minor 2: ids of the commands this status answers
    config_group: str = ""  # since minor 2: the group whose configuration bundles it follows ("": none)
    config_version: int = 0  # since minor 2: the bundle version applied (0: none)

    STATES: ClassVar[tuple[str, ...]] = ("online", "offline")
    MODEL_STATES: ClassVar[tuple[str, ...]] = ("none", "ok", "failed", "reverted", "updating")

    def header(self) -> dict:
        return {
            "agent_id": self.agent_id, "state": self.state, "at": self.at,
            "software_version": self.software_version, "model_name": self.model_name,
            "model_version": self.model_version, "model_state": self.model_state,
            "cameras": list(self.cameras), "cohorts": list(self.cohorts), "detail": self.detail,
            "provider": self.provider, "tags": dict(self.tags), "answered": list(self.answered),
            "config_group": self.config_group, "config_version": self.config_version,
        }

    @classmethod
    def from_header(cls, f: Fields, body: bytes) -> "Status":
        return cls(
            agent_id=f.text("agent_id", pattern=ID_RE), state=f.text("state", choices=cls.STATES),
            at=f.number("at", 0.0, EPOCH_MAX), software_version=f.text("software_version", 64, default=""),
            model_name=f.text("model_name", 64, default=""),
            model_version=f.integer("model_version", 0, 2**31, 0),
            model_state=f.text("model_state", choices=cls.MODEL_STATES, default="none"),
            cameras=f.text_list("cameras", 64, pattern=ID_RE, default=()),
            cohorts=f.text_list("cohorts", 64, pattern=ID_RE, default=()),
            detail=f.text("detail", 1024, default="", prose=True), provider=f.text("provider", 64, default=""),
            tags=_tags(f), answered=f.text_list("answered", MAX_ANSWERED, pattern=ID_RE, default=()),
            config_group=f.text("config_group", 64, default=""),
            config_version=f.integer("config_version", 0, 2**31, 0),
        )


def _tags(f: Fields) -> dict[str, str]:
    out = {}
    for key, value in f.mapping("tags", MAX_TAGS, {}).items():
        if not isinstance(key, str) or not ID_RE.match(key) or not isinstance(value, str) or len(value) > 128 \
                or has_control(value):
            raise ProtocolError("bad_field", "status.tags must map ids to strings of at most 128 characters"
                                " without control characters")
        out[key] = value
    return out


def _histograms(f: Fields, name: str = "conf_hist") -> dict[str, tuple[int, ...]]:
    out = {}
    for label, bins in f.mapping(name, MAX_LABELS, {}).items():
        if not isinstance(label, str) or len(label) > 64 or has_control(label) or not isinstance(bins, (list, tuple)) \
                or len(bins) != HIST_BINS or not all(type(b) is int and 0 <= b < 2**63 for b in bins):
            raise ProtocolError("bad_field", f"{f.kind}.{name} entries must be label -> {HIST_BINS} counts")
        out[label] = tuple(bins)
    return out


def _camera_histograms(f: Fields) -> dict[str, dict[str, tuple[int, ...]]]:
    out = {}
    for camera, hist in f.mapping("camera_hist", MAX_CAMERAS, {}).items():
        if not isinstance(camera, str) or not ID_RE.match(camera):
            raise ProtocolError("bad_field", "telemetry.camera_hist keys must be camera ids")
        out[camera] = _histograms(Fields(f"telemetry.camera_hist.{camera}", {"hist": hist}), "hist")
    return out


@dataclass(frozen=True)
class Telemetry:
    """Periodic health figures of one agent (QoS 0: the next one replaces a lost one)."""

    KIND: ClassVar[str] = "telemetry"
    agent_id: str
    at: float
    period_s: float
    model_version: int
    fps: float
    latency_p50_ms: float
    latency_p99_ms: float
    frames: int  # inferred since start
    sampled: int  # picked since start
    inference_errors: int
    outbox_depth: int
    outbox_bytes: int
    drops: dict[str, int]  # reason -> count since start
    conf_hist: dict[str, tuple[int, ...]]  # top-1 label -> counts over [0, 0.1, ..., 1]
    camera_fps: dict[str, float] = field(default_factory=dict)
    provider: str = ""  # as Status.provider
    # Since minor 4: camera id -> that camera's conf_hist (conf_hist pools them), for drift per camera.
    camera_hist: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)

    def header(self) -> dict:
        h = {
            "agent_id": self.agent_id, "at": self.at, "period_s": self.period_s,
            "model_version": self.model_version, "fps": self.fps,
            "latency_p50_ms": self.latency_p50_ms, "latency_p99_ms": self.latency_p99_ms,
            "frames": self.frames, "sampled": self.sampled, "inference_errors": self.inference_errors,
            "outbox_depth": self.outbox_depth, "outbox_bytes": self.outbox_bytes, "drops": dict(self.drops),
            "conf_hist": {k: list(v) for k, v in self.conf_hist.items()}, "camera_fps": dict(self.camera_fps),
            "provider": self.provider,
        }
        if self.camera_hist:
            h["camera_hist"] = {c: {k: list(v) for k, v in hist.items()} for c, hist in self.camera_hist.items()}
        return h

    @classmethod
    def from_header(cls, f: Fields, body: bytes) -> "Telemetry":
        cam = {}
        for key, value in f.mapping("camera_fps", 64, {}).items():
            if not isinstance(key, str) or not ID_RE.match(key):
                raise ProtocolError("bad_field", "telemetry.camera_fps keys must be camera ids")
            cam[key] = Fields("telemetry.camera_fps", {key: value}).number(key, 0.0, 1e5)
        big = 2**63 - 1
        return cls(
            agent_id=f.text("agent_id", pattern=ID_RE), at=f.number("at", 0.0, EPOCH_MAX),
            period_s=f.number("period_s", 0.0, 86400.0), model_version=f.integer("model_version", 0, 2**31),
            fps=f.number("fps", 0.0, 1e5), latency_p50_ms=f.number("latency_p50_ms", 0.0, 1e7),
            latency_p99_ms=f.number("latency_p99_ms", 0.0, 1e7), frames=f.integer("frames", 0, big),
            sampled=f.integer("sampled", 0, big), inference_errors=f.integer("inference_errors", 0, big),
            outbox_depth=f.integer("outbox_depth", 0, big), outbox_bytes=f.integer("outbox_bytes", 0, big),
            drops=f.counters("drops"), conf_hist=_histograms(f), camera_fps=cam,
            provider=f.text("provider", 64, default=""), camera_hist=_camera_histograms(f),
        )


@dataclass(frozen=True)
class Command:
    """An order from the server to one agent."""

    KIND: ClassVar[str] = "command"
    command_id: str
    action: str
    issued_at: float
    args: dict = field(default_factory=dict)
    # Since minor 3: after this time (seconds since the epoch) the agent refuses the command, so one
    # that a broker or a client queue delivers late (after a reconnect) never runs. 0: no expiry.
    expires_at: float = 0.0

    ACTIONS: ClassVar[tuple[str, ...]] = ("rollback", "reload_config", "ping", "resend_outbox")

    def header(self) -> dict:
        h = {"command_id": self.command_id, "action": self.action, "issued_at": self.issued_at,
             "args": dict(self.args)}
        if self.expires_at:
            h["expires_at"] = self.expires_at
        return h

    def expired(self, now: float) -> bool:
        return bool(self.expires_at) and now > self.expires_at

    @classmethod
    def from_header(cls, f: Fields, body: bytes) -> "Command":
        args = f.mapping("args", 32, {})
        for key, value in args.items():
            if not isinstance(key, str) or len(key) > 64 or not (
                    value is None or isinstance(value, (bool, int, float)) or
                    (isinstance(value, str) and len(value) <= 1024)):
                raise ProtocolError("bad_field", "command.args must map short names to scalars")
        return cls(command_id=f.text("command_id", pattern=ID_RE), action=f.text("action", choices=cls.ACTIONS),
                   issued_at=f.number("issued_at", 0.0, EPOCH_MAX), args=args,
                   expires_at=f.number("expires_at", 0.0, EPOCH_MAX, 0.0))


@dataclass(frozen=True)
class Announcement:
    """A signed model manifest and where to download the model.

    ``manifest`` is the exact canonical-JSON bytes that were signed; receivers
    verify the signature over these bytes before trusting anything in them
    (protocol.manifest.verify). The URL is outside the signature on purpose:
    the signed sha256 and size make any mirror safe.
    """

    KIND: ClassVar[str] = "announcement"
    manifest: bytes
    signature: bytes
    url: str

    def header(self) -> dict:
        return {"manifest": self.manifest, "signature": self.signature, "url": self.url}

    @classmethod
    def from_header(cls, f: Fields, body: bytes) -> "Announcement":
        url = f.text("url", 2048)
        if not url.startswith(("http://", "https://")):
            raise ProtocolError("bad_field", "announcement.url must be http:// or https://")
        return cls(manifest=f.blob("manifest", 64 * 1024), signature=f.blob("signature", 64, exact=64), url=url)


@dataclass(frozen=True)
class ConfigBundle:
    """A signed configuration bundle for one agent group (protocol.bundle), retained on the group's topic.

    ``bundle`` is the exact canonical-JSON bytes that were signed; an empty
    ``signature`` travels (so the agent can say why it refused it) but is
    never trusted.
    """

    KIND: ClassVar[str] = "config"
    bundle: bytes
    signature: bytes = b""

    def header(self) -> dict:
        return {"bundle": self.bundle, "signature": self.signature}

    @classmethod
    def from_header(cls, f: Fields, body: bytes) -> "ConfigBundle":
        signature = f.blob("signature", 64)
        if len(signature) not in (0, 64):
            raise ProtocolError("bad_field", "config.signature must be empty or 64 bytes")
        return cls(bundle=f.blob("bundle", MAX_BUNDLE), signature=signature)


MESSAGE_TYPES = (Sample, Receipt, Status, Telemetry, Command, Announcement, ConfigBundle)
TYPE_BY_KIND = {cls.KIND: cls for cls in MESSAGE_TYPES}
Message = Sample | Receipt | Status | Telemetry | Command | Announcement | ConfigBundle
