"""The demo's labeller: answers the error queue through the REST API, as a scripted reviewer would.

A synthetic camera's frame ``i`` is a pure function of its seed and ``i``
(agent.synthetic), and the agent names frames ``agent.camera.boot-seq`` with
``seq`` counting the camera's frames from 0, so the oracle can regenerate
any sampled frame and read its true label. It never looks at the model.
"""

from __future__ import annotations

import logging
import re
import threading

import httpx

from agent.synthetic import SyntheticCamera

from .layout import CAMERA_H, CAMERA_W, DRIFT_FRAMES, MAX_SHAPES, camera_seed

log = logging.getLogger(__name__)
FRAME_RE = re.compile(r"^demo-agent-(?P<n>\d+)\.cam\.[^-]+-(?P<seq>\d+)$")


def true_label(frame_id: str, seed: int) -> str | None:
    m = FRAME_RE.match(frame_id)
    if not m:
        return None
    i = int(m["n"]) - 1
    camera = SyntheticCamera(camera_seed(seed, i), CAMERA_W, CAMERA_H, 1.0 / DRIFT_FRAMES, max_shapes=MAX_SHAPES)
    return camera.frame(int(m["seq"])).label


class Oracle:
    """Labels every pending item every ``period`` seconds; counts what it did."""

    def __init__(self, base_url: str, token: str, seed: int, period: float = 1.0) -> None:
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}",
                                                                "X-User": "oracle"}, timeout=30)
        self.seed = seed
        self.period = period
        self.labelled = 0
        self.corrected = 0  # the model's prediction was wrong
        self.unknown = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oracle", daemon=True)

    def start(self) -> "Oracle":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.label_pending()
            except httpx.HTTPError as e:  # the server restarting or busy: try again next period
                log.warning("oracle: %s", e)

    def label_pending(self) -> int:
        items = self.client.get("/api/queue", params={"limit": 100}).raise_for_status().json()["items"]
        done = 0
        for item in items:
            label = true_label(item.get("frame_id") or "", self.seed)
            if label is None:  # not from a demo camera: leave it to a person
                self.unknown += 1
                continue
            r = self.client.post(f"/api/items/{item['id']}/label", json={"action": "label", "label": label})
            if r.status_code == 200:
                done += 1
                self.labelled += 1
                self.corrected += label != item.get("predicted_label")
            else:
                log.warning("oracle: labelling item %s answered %d %s", item["id"], r.status_code, r.text[:200])
        return done
