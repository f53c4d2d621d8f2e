"""A teacher: an ONNX model run by the agent's own runner, its output mapped to the project's labels.

``Teacher.load`` opens the model with ``agent.model.ModelRunner`` (the same card, preprocessing and
decoding an agent uses), checks the label map against the card and the project, and warms up; any
problem is a ``TeacherError`` naming it. ``Teacher.predict`` turns one BGR image into a ``PreLabel``.
No threads; ``predict`` is for one thread at a time (the runner reuses its input buffer).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.decode import nms
from agent.model import ModelError, ModelRunner, load_runner

from .config import AssistConfig

NMS_IOU = 0.5  # after mapping, car and truck boxes on one object become two "vehicle" boxes


class TeacherError(RuntimeError):
    """A teacher that cannot be used: not loadable, card not fitting, labels that map to nothing."""


@dataclass(frozen=True)
class PreLabel:
    """What the teacher says about one image, in project labels; boxes normalized to [0, 1]."""

    label: str | None  # classification: the top mapped class at or above min_score
    score: float | None  # classification: its probability; detection: the best box's score (None: no boxes)
    scores: dict[str, float] = field(default_factory=dict)
    boxes: list[dict] = field(default_factory=list)  # {x1, y1, x2, y2, score, label}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Teacher:
    def __init__(self, runner: ModelRunner, cfg: AssistConfig, mapping: dict[str, str], key: str,
                 sha256: str) -> None:
        self.runner = runner
        self.cfg = cfg
        self.mapping = mapping  # every teacher label kept -> its project label
        self.key = key
        self.sha256 = sha256

    @classmethod
    def load(cls, cfg: AssistConfig, project_task: str | None, project_labels: tuple[str, ...]) -> "Teacher":
        if not cfg.model.is_file():
            raise TeacherError(f"assist.model {cfg.model} is not a file")
        try:
            runner = load_runner(cfg.model, cfg.card, cfg.providers, score_floor=cfg.min_score, threads=cfg.threads)
        except ModelError as e:
            raise TeacherError(f"assist.model {cfg.model}: {e}") from e
        card = runner.card
        if project_task is not None and card.task != project_task:
            raise TeacherError(f"teacher {card.name} is a {card.task} model; the project is {project_task}")
        mapping = label_mapping(card.labels, cfg.label_map, project_labels, card.name)
        sha = file_sha256(cfg.model)
        # Whatever changes the pre-labels changes the key, so a new teacher pre-labels everything again.
        ident = json.dumps([sha, card.to_json(), sorted(mapping.items()), cfg.min_score])
        return cls(runner, cfg, mapping, hashlib.sha256(ident.encode()).hexdigest()[:16], sha)

    @property
    def name(self) -> str:
        return self.runner.card.name

    @property
    def version(self) -> int:
        return self.runner.card.version

    @property
    def task(self) -> str:
        return self.runner.card.task

    def predict(self, image: np.ndarray) -> PreLabel:
        """BGR image -> PreLabel; raises whatever the model raises (NonFiniteOutput for NaN)."""
        pred = self.runner.infer(image)
        if pred.task == "classification":
            return map_scores(pred.labels, pred.scores, self.mapping, self.cfg.min_score)
        iou = getattr(self.runner.card.output, "iou_threshold", NMS_IOU)
        return map_boxes(pred.labels, pred.boxes, pred.box_scores, pred.box_labels, self.mapping,
                         self.cfg.min_score, iou)


def label_mapping(teacher_labels: tuple[str, ...], label_map: dict[str, str], project_labels: tuple[str, ...],
                  name: str) -> dict[str, str]:
    """Teacher label -> project label for every teacher label kept; raises TeacherError on a bad map."""
    unknown = [k for k in label_map if k not in teacher_labels]
    if unknown:
        raise TeacherError(f"assist.label_map names {', '.join(map(repr, unknown))}, not labels of teacher "
                           f"{name} ({', '.join(teacher_labels[:12])}{', ...' if len(teacher_labels) > 12 else ''})")
    if project_labels:
        outside = sorted({t for t in label_map.values() if t not in project_labels})
        if outside:
            raise TeacherError(f"assist.label_map maps to {', '.join(map(repr, outside))}, not labels of the "
                               f"project ({', '.join(project_labels)})")
    mapping = {t: t for t in teacher_labels if t in project_labels}
    mapping.update(label_map)
    if not mapping:
        raise TeacherError(f"none of teacher {name}'s labels is a project label: set assist.label_map")
    return mapping


def map_scores(labels: tuple[str, ...], scores: np.ndarray, mapping: dict[str, str], min_score: float) -> PreLabel:
    """Class probabilities summed per project label (P(vehicle) = P(car) + P(truck) + ...)."""
    out: dict[str, float] = {}
    for label, p in zip(labels, scores.tolist()):
        if label in mapping:
            out[mapping[label]] = out.get(mapping[label], 0.0) + float(p)
    out = {k: min(1.0, v) for k, v in out.items()}
    top = max(out, key=out.get) if out else None
    if top is None or out[top] < min_score:
        return PreLabel(None, out.get(top) if top else None, out)
    return PreLabel(top, out[top], out)


def map_boxes(labels: tuple[str, ...], boxes: np.ndarray, scores: np.ndarray, label_idx: np.ndarray,
              mapping: dict[str, str], min_score: float, iou: float) -> PreLabel:
    """Boxes at or above min_score whose label maps, relabelled, then NMS per project label."""
    kept: dict[str, list[int]] = {}
    for i, (s, li) in enumerate(zip(scores.tolist(), label_idx.tolist())):
        target = mapping.get(labels[int(li)])
        if target is not None and s >= min_score:
            kept.setdefault(target, []).append(i)
    out = []
    for target, idx in kept.items():
        idx_arr = np.array(idx, np.int64)
        for i in idx_arr[nms(boxes[idx_arr], scores[idx_arr], iou)]:
            x1, y1, x2, y2 = (round(float(v), 6) for v in boxes[i])
            if x2 > x1 and y2 > y1:  # a box clipped to nothing at the frame's edge is no object
                out.append({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": round(float(scores[i]), 6),
                            "label": target})
    out.sort(key=lambda b: -b["score"])
    return PreLabel(None, out[0]["score"] if out else None, {}, out)
