"""Run one training round at a time in a spawned process, never in a web request.

The child imports torch and calls ``trainer.train.round.run_round``; it sends
``("epoch", {...})`` per epoch and one final ``("done" | "failed" |
"cancelled", ...)`` through a multiprocessing queue. A monitor thread in the
parent keeps the progress snapshot and calls ``on_finish`` exactly once per
round, also when the child dies without a word (killed, out of memory).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from trainer.dataset import Example

log = logging.getLogger(__name__)
FINAL = ("done", "failed", "cancelled")


class Busy(RuntimeError):
    """A round is already running."""


@dataclass(frozen=True)
class RoundSpec:
    round_id: int
    examples: list[Example]
    config: dict  # TrainConfig as a plain dict (validated in the child too)
    out_dir: str
    name: str
    version: int
    parent: str | None = None  # checkpoint of the model this round starts from
    existing_splits: dict = field(default_factory=dict)
    labels: tuple = ()  # the project's classes: one with no labelled example is named as too few


@dataclass(frozen=True)
class RoundOutcome:
    round_id: int
    state: str  # done | failed | cancelled
    result: dict | None  # see _summary
    error: str
    started: float
    finished: float


def _summary(r) -> dict:
    """A RoundResult as plain data, so the parent needs no torch to read it."""
    return {"round": r.round, "task": r.task, "model": r.model, "labels": list(r.labels), "splits": dict(r.splits),
            "split_counts": dict(r.split_counts), "metrics": r.metrics, "overfit": bool(r.overfit),
            "stop_reason": r.stop_reason, "dataset_version": r.dataset_version, "checkpoint": str(r.checkpoint),
            "onnx": str(r.onnx) if r.onnx else None, "report": {k: str(v) for k, v in r.report.items()},
            "export_check": r.export_check, "seconds": r.seconds, "fit": r.fit.to_dict(), "imbalance": r.imbalance}


def _exit_with_parent(parent: int) -> None:
    """A worker killed with -9 cannot stop its round: the round stops itself (its job goes to another worker)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(3)


def _child_main(spec: RoundSpec, events: "mp.Queue", cancel: "mp.synchronize.Event") -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s round: %(message)s")
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    try:
        from trainer.train.config import TrainConfig
        from trainer.train.errors import RoundCancelled, TrainingError
        from trainer.train.round import run_round

        def on_epoch(e) -> None:
            events.put(("epoch", {"epoch": e.epoch, "loss": e.loss, "val_loss": e.val_loss, "lr": e.lr,
                                  "seconds": e.seconds, "val_metric": e.val_metric, "metric_name": e.metric_name}))
        try:
            result = run_round(spec.examples, TrainConfig.model_validate(spec.config), spec.out_dir,
                               parent=spec.parent, existing_splits=spec.existing_splits, round_index=spec.round_id,
                               name=spec.name, version=spec.version, on_epoch=on_epoch, should_cancel=cancel.is_set,
                               project_labels=spec.labels)
        except RoundCancelled as e:
            events.put(("cancelled", str(e)))
            return
        except TrainingError as e:
            events.put(("failed", str(e)))
            return
        if result.onnx is None:
            events.put(("failed", "the round exported no ONNX model (export.enabled is false)"))
            return
        events.put(("done", _summary(result)))
    except BaseException:  # everything else is a bug: report it whole rather than die silently
        events.put(("failed", traceback.format_exc()[-4000:]))


class RoundWorker:
    """``start(spec)``, ``progress()``, ``cancel()``; ``on_finish(outcome)`` runs on a monitor thread."""

    def __init__(self, on_finish: Callable[[RoundOutcome], None], clock: Callable[[], float] = time.time) -> None:
        self.on_finish = on_finish
        self.clock = clock
        self._ctx = mp.get_context("spawn")  # a fork would copy the server's threads and SQLite handles
        self._lock = threading.Lock()
        self._proc = None
        self._cancel = None
        self._monitor: threading.Thread | None = None
        self._progress: dict = {"state": "idle", "round_id": None, "epochs": []}

    @property
    def running(self) -> bool:
        with self._lock:
            return self._progress["state"] == "running"

    def progress(self) -> dict:
        with self._lock:
            p = dict(self._progress)
            p["epochs"] = list(p["epochs"])
            return p

    def start(self, spec: RoundSpec) -> None:
        with self._lock:
            if self._progress["state"] == "running":
                raise Busy(f"round {self._progress['round_id']} is running")
            events = self._ctx.Queue()
            self._cancel = self._ctx.Event()
            self._proc = self._ctx.Process(target=_child_main, args=(spec, events, self._cancel),
                                           name=f"edgeloop-round-{spec.round_id}", daemon=True)
            self._progress = {"state": "running", "round_id": spec.round_id, "epochs": [], "started": self.clock(),
                              "finished": None, "error": "", "cancel_requested": False}
            self._proc.start()
            self._monitor = threading.Thread(target=self._watch, args=(self._proc, events, spec.round_id),
                                             name=f"round-monitor-{spec.round_id}", daemon=True)
            self._monitor.start()

    def cancel(self) -> bool:
        """Ask the running round to stop after its current batch; False when none runs."""
        with self._lock:
            if self._progress["state"] != "running" or self._cancel is None:
                return False
            self._cancel.set()
            self._progress["cancel_requested"] = True
            return True

    def join(self, timeout: float | None = None) -> bool:
        m = self._monitor
        if m is not None:
            m.join(timeout)
            return not m.is_alive()
        return True

    def _watch(self, proc, events, round_id: int) -> None:
        final: tuple[str, object] | None = None
        while final is None:
            try:
                kind, data = events.get(timeout=0.5)
            except queue.Empty:
                if not proc.is_alive():
                    try:  # the last message may land just after the exit
                        kind, data = events.get(timeout=1.0)
                    except queue.Empty:
                        final = ("failed", f"the round process exited with code {proc.exitcode} without a result")
                        break
                else:
                    continue
            if kind == "epoch":
                with self._lock:
                    self._progress["epochs"].append(data)
            elif kind in FINAL:
                final = (kind, data)
        proc.join(30)
        state, data = final
        finished = self.clock()
        with self._lock:
            started = self._progress["started"]
            self._progress.update(state=state, finished=finished,
                                  error="" if state == "done" else str(data))
        outcome = RoundOutcome(round_id, state, data if state == "done" else None,
                               "" if state == "done" else str(data), started, finished)
        log.info("round %d %s in %.1fs%s", round_id, state, finished - started,
                 "" if state == "done" else f": {str(data)[:300]}")
        try:
            self.on_finish(outcome)
        except Exception:
            log.exception("handling the end of round %d failed", round_id)
