"""The assist service: loads the teacher and pre-labels unlabelled examples in the background.

Threads: ``assist-scan`` finds unlabelled examples the teacher has not pre-labelled yet (every
``poll_s`` when ``auto``, else after ``request_run``) and puts their ids on a bounded queue,
waiting while it is full; ``assist-run`` takes ids off it, runs the teacher and writes each result
through the store's writer. The database is the only record of what is done (a pre-label row per
example and teacher), so a restart resumes where it stopped and nothing is pre-labelled twice.

A teacher that fails to load leaves the service in state ``failed`` with the reason (logged, and
shown by ``GET /api/assist``); the server keeps running without it. A teacher that raises on an
image is a counted rejection: a ``failed`` row with the error, retried only on request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import cv2
import numpy as np

from trainer.store import NotFound, Store

from . import prelabels
from .config import AssistConfig
from .teacher import Teacher, TeacherError

log = logging.getLogger(__name__)
LOG_EVERY_S = 30.0  # a teacher failing on every image logs once per this period, with the count


class Assist:
    def __init__(self, store: Store, cfg: AssistConfig) -> None:
        self.store = store
        self.cfg = cfg
        self.teacher: Teacher | None = None
        self.state = "disabled" if not cfg.enabled else "loading"
        self.error: str | None = None
        self._queue: queue.Queue[int] = queue.Queue(maxsize=cfg.queue_size)
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._backlog = cfg.auto
        self._threads: list[threading.Thread] = []
        self._failures_since_log = 0
        self._last_log = 0.0
        self.seconds_total = 0.0
        self.processed = 0

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> "Assist":
        """Load the teacher and start the threads; a teacher that cannot load leaves state ``failed``."""
        if not self.cfg.enabled:
            log.info("assist: disabled in the config")
            return self
        project = self.store.project()
        try:
            self.teacher = Teacher.load(self.cfg, project.task, project.labels)
        except TeacherError as e:
            self.state, self.error = "failed", str(e)
            log.error("assist: the teacher is not loaded and nothing will be pre-labelled: %s", e)
            return self
        self.state = "ready"
        t = self.teacher
        log.info("assist: teacher %s v%d (%s, key %s) pre-labels %s", t.name, t.version, t.task, t.key,
                 "new unlabelled items" if self.cfg.auto else "on request (POST /api/assist/run)")
        self._threads = [threading.Thread(target=self._scan_loop, name="assist-scan", daemon=True),
                         threading.Thread(target=self._run_loop, name="assist-run", daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(30)
        self._threads = []
        if self.state == "ready":
            self.state = "stopped"

    # -- requests ------------------------------------------------------------
    def request_run(self, *, retry_failed: bool = False, force: bool = False) -> int:
        """Pre-label every unlabelled example the teacher owes (redoing failed / all ones if asked).

        Returns how many are now waiting. Raises TeacherError when the teacher is not loaded.
        """
        if self.teacher is None:
            raise TeacherError(f"the teacher is not loaded ({self.state}): {self.error or 'assist is disabled'}")
        prelabels.reset(self.store, self.teacher.key, failed=retry_failed or force, done=force)
        with self._lock:
            self._backlog = True
        self._wake.set()
        return prelabels.counts(self.store, self.teacher.key)["waiting"]

    def status(self) -> dict:
        t = self.teacher
        out = {"enabled": self.cfg.enabled, "state": self.state, "error": self.error, "auto": self.cfg.auto,
               "min_score": self.cfg.min_score, "label_map": dict(self.cfg.label_map), "model": str(self.cfg.model),
               "queued": self._queue.qsize(), "processed": self.processed,
               "mean_seconds": self.seconds_total / self.processed if self.processed else None,
               "teacher": None, "counts": None}
        if t is not None:
            out["teacher"] = {"name": t.name, "version": t.version, "task": t.task, "key": t.key, "sha256": t.sha256,
                              "labels": list(t.runner.card.labels), "mapping": t.mapping,
                              "provider": getattr(t.runner, "provider", None),
                              "provider_warning": getattr(t.runner, "provider_warning", None) or None}
            out["counts"] = prelabels.counts(self.store, t.key)
        return out

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is owed, queued or running (for tests and the offline CLI)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._in_flight)
            if not busy and self.teacher and not prelabels.counts(self.store, self.teacher.key)["waiting"]:
                return True
            self._wake.set()
            time.sleep(0.05)
        return False

    # -- threads -------------------------------------------------------------
    def _scan_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cfg.poll_s)
            self._wake.clear()
            with self._lock:
                due = self._backlog or self.cfg.auto
            if not due:
                continue
            try:
                found = self._scan_once()
            except Exception:  # a failed scan is retried next period; it must never stop the service
                log.exception("assist: scanning for unlabelled items failed")
                continue
            if not found and not self.cfg.auto:
                with self._lock:
                    self._backlog = bool(self._in_flight)

    def _scan_once(self) -> int:
        with self._lock:
            busy = set(self._in_flight)
        ids = prelabels.missing(self.store, self.teacher.key, self.cfg.queue_size, busy)
        for example_id in ids:
            with self._lock:
                self._in_flight.add(example_id)
            while not self._stop.is_set():
                try:  # a full queue holds the scan back: the database keeps what is still owed
                    self._queue.put(example_id, timeout=0.5)
                    break
                except queue.Full:
                    continue
        return len(ids)

    def _run_loop(self) -> None:
        while not self._stop.is_set():
            try:
                example_id = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                result = self._prelabel(example_id)
                if result is not None:
                    prelabels.save(self.store, self.teacher.key, self.teacher.name, self.teacher.version, [result])
            except Exception:  # a store error; the row is still owed and the next scan retries it
                log.exception("assist: saving the pre-label of example %d failed", example_id)
                self._stop.wait(1.0)
            finally:
                with self._lock:
                    self._in_flight.discard(example_id)
            if self._queue.empty():
                self._wake.set()  # more may be owed than one scan's worth

    def _prelabel(self, example_id: int) -> prelabels.Result | None:
        if not prelabels.unlabelled(self.store, example_id):
            return None  # labelled while it waited: nothing to suggest any more
        try:
            data, _ = self.store.image(example_id)
        except NotFound:
            return None
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            return self._failed(example_id, "the stored image does not decode")
        start = time.perf_counter()
        try:
            p = self.teacher.predict(image)
        except Exception as e:  # the model's own errors are untyped; each is a counted rejection
            return self._failed(example_id, f"{type(e).__name__}: {str(e).strip()[:300]}")
        seconds = time.perf_counter() - start
        self.processed += 1
        self.seconds_total += seconds
        return prelabels.Result(example_id, "done", p.label, p.score, p.scores, p.boxes, seconds=seconds)

    def _failed(self, example_id: int, error: str) -> prelabels.Result:
        self._failures_since_log += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            log.warning("assist: teacher failed on example %d (%d failures since the last report): %s",
                        example_id, self._failures_since_log, error)
            self._failures_since_log, self._last_log = 0, now
        return prelabels.Result(example_id, "failed", error=error)
