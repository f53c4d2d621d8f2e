"""The demo's labeller: answers the error queue through the REST API, as a scripted reviewer would.

A synthetic camera's frame ``i`` is a pure function of its seed and ``i``
(agent.synthetic), and the agent names frames ``agent.camera.boot-seq`` with
``seq`` counting the camera's frames from 0, so the oracle can regenerate
any sampled frame and read its true label. It never looks at the model.
"""

from __future__ import annotations

import re

from agent.synthetic import SyntheticCamera

from .labellers import Answer, QueueLabeller
from .layout import CAMERA_H, CAMERA_W, DRIFT_FRAMES, MAX_SHAPES, camera_seed
FRAME_RE = re.compile(r"^demo-agent-(?P<n>\d+)\.cam\.[^-]+-(?P<seq>\d+)$")


def true_label(frame_id: str, seed: int) -> str | None:
    m = FRAME_RE.match(frame_id)
    if not m:
        return None
    i = int(m["n"]) - 1
    camera = SyntheticCamera(camera_seed(seed, i), CAMERA_W, CAMERA_H, 1.0 / DRIFT_FRAMES, max_shapes=MAX_SHAPES)
    return camera.frame(int(m["seq"])).label


def true_labels(seed: int) -> Answer:
    """Label each demo camera frame with its true class; leave any other item to a person."""
    def answer(item: dict):
        label = true_label(item.get("frame_id") or "", seed)
        return None if label is None else (f"/api/items/{item['id']}/label", {"action": "label", "label": label})
    return answer


class Oracle(QueueLabeller):
    """Labels every pending demo item every ``period`` seconds; counts what it did (see QueueLabeller)."""

    def __init__(self, base_url: str, token: str, seed: int, period: float = 1.0) -> None:
        super().__init__(base_url, token, true_labels(seed), period, user="oracle")
        self.seed = seed
