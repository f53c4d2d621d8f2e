"""Request and response models of the REST API (they are the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trainer.store import Item

Label = str


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectOut(BaseModel):
    name: str
    task: Literal["classification", "detection"] | None
    labels: list[str]
    batch_size: int


class PredBox(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    label: str


class Prediction(BaseModel):
    scores: dict[str, float]
    boxes: list[PredBox]


class BoxOut(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float
    label: str


class PrelabelOut(BaseModel):
    """A teacher's suggestion (trainer/assist): a prediction with its source and score, never a label itself."""

    source: Literal["teacher"]
    teacher: str = Field(description="key of the teacher: model file, card, label map and min score")
    model_name: str
    model_version: int
    state: Literal["done", "failed"]
    label: str | None = Field(description="classification: the top project label at or above min_score")
    score: float | None = Field(description="classification: its probability; detection: the best box's")
    scores: dict[str, float]
    boxes: list[PredBox] = Field(description="detection: boxes in project labels, normalized 0-1")
    error: str | None = Field(description="why the teacher failed on this image")
    created_at: float


class ItemOut(BaseModel):
    id: int
    image_url: str
    width: int
    height: int
    task: Literal["classification", "detection"] | None
    prediction: Prediction
    predicted_label: str | None
    uncertainty: float | None
    strategy: str | None
    reason: str | None
    agent_id: str | None
    camera_id: str | None
    model_name: str | None
    model_version: int | None
    captured_at: float | None
    frame_id: str | None
    status: Literal["pending_review", "labeled", "rejected", "skipped"]
    label: str | None = Field(description="the current label (classification)")
    boxes: list[BoxOut] = Field(description="the current boxes (detection), normalized 0-1")
    source: Literal["edge", "import", "synthetic"]
    split: Literal["train", "val", "test"] | None
    labeled_by: str | None
    labeled_at: float | None
    prelabel: PrelabelOut | None = Field(None, description="the newest teacher pre-label, if a teacher ran")


class QueueOut(BaseModel):
    items: list[ItemOut]
    total: int
    labels: list[str] = Field(description="the project's labels, once per page (items do not repeat them)")


class LabelNameIn(_In):
    name: str = Field(min_length=1, max_length=64)


class PendingLabelOut(BaseModel):
    name: str
    samples: int = Field(description="stored samples whose model named it")
    first_seen: float
    last_seen: float


class PendingLabelsOut(BaseModel):
    pending: list[PendingLabelOut]
    dropped: int = Field(description="samples' unknown names not listed because the list was full")


class BoxIn(_In):
    x1: float = Field(ge=0.0, le=1.0)
    y1: float = Field(ge=0.0, le=1.0)
    x2: float = Field(ge=0.0, le=1.0)
    y2: float = Field(ge=0.0, le=1.0)
    label: str = Field(min_length=1, max_length=64)


class LabelIn(_In):
    action: Literal["label", "accept", "reject", "skip"]
    label: str | None = Field(None, min_length=1, max_length=64)
    boxes: list[BoxIn] | None = Field(None, max_length=1000)


class LabelOut(BaseModel):
    ok: bool
    item: ItemOut


class UndoOut(BaseModel):
    item_id: int


class SplitCounts(BaseModel):
    train: int
    val: int
    test: int
    unassigned: int


class StatsOut(BaseModel):
    task: Literal["classification", "detection"] | None
    total: int
    counts: dict[str, SplitCounts]
    warnings: list[str]
    guidance: str
    duplicate_clusters: list[list[int]]
    sources: dict[str, int] = Field(default_factory=dict)  # labelled examples by source: edge, import, synthetic


class AgentOut(BaseModel):
    agent_id: str
    state: str
    model_name: str
    model_version: int
    model_state: str
    cameras: list[str]
    fps: float | None
    outbox_depth: int | None
    last_seen: float
    cohorts: list[str]
    detail: str
    software_version: str
    provider: str = Field("", description="execution provider the agent's model runs on (cpu, cuda, tensorrt), "
                          "from its last telemetry; empty before the first")
    camera_fps: dict[str, float]
    latency_p50_ms: float | None
    drops: dict[str, int]
    stale: bool = Field(description="reported online but silent for three telemetry periods (at least 60 s)")


class DeadLetterOut(BaseModel):
    topic: str
    reason: str
    detail: str
    size: int
    at: float


class DeadLettersOut(BaseModel):
    counts: dict[str, int]
    recent: list[DeadLetterOut]


class FleetOut(BaseModel):
    agents: list[AgentOut]


class ProgressOut(BaseModel):
    corrected_since_last_round: int
    batch_size: int
    batch_min: int = 30
    batch_max: int = 50


class LoginIn(_In):
    """An account's ``user`` and ``password``; or a ``token``: a personal API token, or the bootstrap
    token (only while no admin account exists; ``user`` then names who signs in)."""
    token: str | None = Field(None, min_length=1, max_length=512)
    user: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    password: str | None = Field(None, min_length=1, max_length=1024)


class LoginOut(BaseModel):
    ok: bool
    user: str
    csrf_token: str


class HealthOut(BaseModel):
    ok: bool
    mqtt_connected: bool | None
    queue_depth: int
    reason: str = ""  # why ok is false (a stuck ingest commit)


class ErrorOut(BaseModel):
    detail: str


def item_out(item: Item, task: str | None) -> ItemOut:
    return ItemOut(
        id=item.id, image_url=f"/api/images/{item.id}", width=item.width, height=item.height,
        task=task or item.task, prediction=Prediction.model_validate(item.prediction),
        predicted_label=item.predicted_label, uncertainty=item.uncertainty, strategy=item.strategy,
        reason=item.reason, agent_id=item.agent_id, camera_id=item.camera_id, model_name=item.model_name,
        model_version=item.model_version, captured_at=item.captured_at, frame_id=item.frame_id,
        status=item.status, label=item.label, boxes=[BoxOut.model_validate(b) for b in item.boxes],
        source=item.source, split=item.split, labeled_by=item.labeled_by, labeled_at=item.labeled_at,
        prelabel=PrelabelOut.model_validate(item.prelabel) if item.prelabel else None)
