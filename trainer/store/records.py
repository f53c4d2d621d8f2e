"""Plain records the store takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field

STATUSES = ("pending_review", "labeled", "rejected", "skipped")
ACTIONS = ("label", "accept", "reject", "skip")


class StoreError(Exception):
    """Base of the errors the store raises for a caller's mistake."""


class NotFound(StoreError):
    pass


class InvalidLabel(StoreError):
    pass


class Conflict(StoreError):
    pass


@dataclass(frozen=True)
class Project:
    name: str
    task: str | None  # None until configured or the first data arrives
    labels: tuple[str, ...]
    batch_size: int


@dataclass(frozen=True)
class IncomingSample:
    """A decoded sample, its JPEG's sha256 and perceptual hash (see ``trainer.store.incoming``)."""

    sample: object  # protocol.Sample
    sha: str
    phash: int | None
    received_at: float


@dataclass(frozen=True)
class IngestResult:
    stored: tuple[str, ...]  # every frame id now safely stored, new or seen before
    new: int
    duplicates: int
    # (agent_id, frame_id): a frame id already stored for another agent; never receipt these as stored
    conflicts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NewExample:
    """An example to add (imports, synthetic data); ``trainer.store.new_example`` fills the image facts."""

    data: bytes = field(repr=False)
    ext: str
    width: int
    height: int
    label: str | None = None
    boxes: tuple = ()  # LabeledBox
    split: str | None = None
    source: str = "import"
    status: str = "labeled"
    phash: int | None = None
    origin: str | None = None  # unique key (e.g. "voc:raccoon-1.xml") so a re-import adds nothing
    labeled_by: str | None = None
    round_added: int = 0


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    reason: str
    detail: str
    size: int
    prefix: bytes
    at: float


@dataclass(frozen=True)
class QueueFilter:
    camera: str | None = None
    agent: str | None = None
    model_version: int | None = None
    predicted: str | None = None
    strategy: str | None = None
    status: str = "pending_review"


@dataclass(frozen=True)
class Item:
    """An example with what the edge said about it (None fields for imports)."""

    id: int
    blob: str
    media_type: str
    width: int
    height: int
    label: str | None
    boxes: list[dict]
    status: str
    split: str | None
    source: str
    labeled_by: str | None
    labeled_at: float | None
    round_added: int
    prediction: dict = field(default_factory=lambda: {"scores": {}, "boxes": []})
    predicted_label: str | None = None
    uncertainty: float | None = None
    strategy: str | None = None
    reason: str | None = None
    frame_id: str | None = None
    agent_id: str | None = None
    camera_id: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    captured_at: float | None = None
    task: str | None = None
    prelabel: dict | None = None  # the newest teacher pre-label (trainer/assist), a prediction, not a label
