"""Scripted reviewers: answer the review queue through the REST API, as a person would.

``QueueLabeller`` polls ``GET /api/queue`` every ``period`` seconds on its own
thread and answers each pending item with what ``answer(item)`` says:

- ``accept_prelabel``: accept the server teacher's pre-label (``--auto-label``
  with a teacher). An item the teacher has not reached yet answers 422 and is
  tried again at the next poll.
- ``known_boxes(truth)``: label with the true boxes of the frame (a test's
  synthetic video, where every frame's objects are known).
- ``edgeloop.demo.oracle.true_labels(seed)``: the classification demo's true
  class of a synthetic camera frame.

It waits only on HTTP calls (30 s timeout each); ``stop`` joins the thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import httpx

log = logging.getLogger(__name__)

# (path, JSON body or None) to POST for an item, or None to leave it to a person.
Answer = Callable[[dict], "tuple[str, dict | None] | None"]


def accept_prelabel(item: dict) -> tuple[str, None]:
    return f"/api/items/{item['id']}/accept-prelabel", None


def known_boxes(truth: Callable[[str], list[dict] | None]) -> Answer:
    """``truth(frame_id)``: the frame's boxes (normalized x1, y1, x2, y2, label), None when unknown."""
    def answer(item: dict):
        boxes = truth(item.get("frame_id") or "")
        if boxes is None:
            return None
        return f"/api/items/{item['id']}/label", {"action": "label", "boxes": boxes}
    return answer


class QueueLabeller:
    """Counts: ``labelled``, ``corrected`` (the label's box count differs from the edge model's
    detections), ``waiting`` (answers refused for now, e.g. no pre-label yet), ``unknown``."""

    def __init__(self, base_url: str, token: str, answer: Answer, period: float = 1.0,
                 user: str = "auto-labeller") -> None:
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}",
                                                                "X-User": user}, timeout=30)
        self.answer = answer
        self.period = period
        self.labelled = 0
        self.corrected = 0
        self.waiting = 0
        self.unknown = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labeller", daemon=True)

    def start(self) -> "QueueLabeller":
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
                log.warning("labeller: %s", e)

    def label_pending(self) -> int:
        items = self.client.get("/api/queue", params={"limit": 100}).raise_for_status().json()["items"]
        done = 0
        for item in items:
            if self._stop.is_set():
                break
            what = self.answer(item)
            if what is None:
                self.unknown += 1
                continue
            path, body = what
            r = self.client.post(path, json=body) if body is not None else self.client.post(path)
            if r.status_code == 200:
                done += 1
                self.labelled += 1
                self.corrected += _corrected(item, body, r.json()["item"])
            elif r.status_code == 422:
                self.waiting += 1
            else:
                log.warning("labeller: item %s answered %d %s", item["id"], r.status_code, r.text[:200])
        return done


def _corrected(item: dict, body: dict | None, after: dict) -> bool:
    """A class other than the model's prediction, or (detection) another number of boxes than it found."""
    if body is not None and "label" in body:
        return body["label"] != item.get("predicted_label")
    return len(after["boxes"]) != _detections(item)


def _detections(item: dict, threshold: float = 0.3) -> int:
    return sum(1 for b in item.get("prediction", {}).get("boxes", []) if b.get("score", 0.0) >= threshold)
