"""The server side of a training round: trigger, run in the worker, register, gate, hand to the rollout.

``RoundManager`` is what the server owns (``app.state.rounds``)::

    rounds = RoundManager(store, registry, RoundsConfig(work_dir=...), rollout=svc.controller)
    rounds.start_auto()          # checks the trigger every ``poll_s``
    rounds.start_round("manual") # from the UI/API
    rounds.progress(); rounds.cancel()

On a finished round: splits are persisted in the store, the model is
registered with its lineage (example ids and splits), the gate compares it
with the current fleet model, and a passing candidate goes to a staged
rollout (when ``auto_publish`` and a controller are set); a refused one is
marked ``rejected`` with the gate's reasons.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainer.publish.gate import GateConfig, GateDecision, decide as gate_decide

from .evaluate import same_split_metrics
from trainer.drift.reference import store_reference
from trainer.publish.registry import ModelRecord, NewModel, Registry
from trainer.synthetic.mix import SyntheticMix, synthetic_state, top_up

from . import trigger
from .jobs import Job, RoundJobs
from .worker import Busy, RoundOutcome, RoundSpec, RoundWorker

log = logging.getLogger(__name__)


class RoundsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field("model", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    work_dir: Path | None = None  # one folder per round: checkpoints, ONNX, report (server: <data_dir>/rounds)
    train: dict = Field(default_factory=dict)  # trainer.train.config.TrainConfig as a dict
    gate: GateConfig = GateConfig()
    auto_start: bool = True  # start a round when the batch of corrections is reached
    # What the trigger counts towards the batch: every labelled edge sample, or only corrections
    # (a class other than the model's, or edited boxes), as the seed's "30 to 50 errors" says.
    trigger_count: trigger.TriggerCount = "labels"
    synthetic: SyntheticMix | None = None  # mix generated examples into training (never val/test)
    auto_publish: bool = True  # roll out a candidate that passes the gate
    poll_s: float = Field(5.0, gt=0, le=3600)

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict) -> dict:
        # Fail at start-up, naming the key, rather than in the worker at the first round.
        from trainer.train.config import TrainConfig
        from trainer.train.errors import TrainingError

        try:
            TrainConfig.model_validate(v)
        except ValueError as e:
            raise ValueError(f"bad training config: {e}") from e
        except TrainingError as e:
            raise ValueError(str(e)) from e
        return v


@dataclass(frozen=True)
class RoundReport:
    """What happened after a round finished (also kept as ``RoundManager.last``)."""

    round_id: int
    state: str  # done | failed | cancelled
    version: int | None = None
    gate: GateDecision | None = None
    error: str = ""
    rollout_started: bool = False
    timings: dict = field(default_factory=dict)  # seconds: process (worker wall), train (run_round), register, gate


def val_accuracy(fit: dict | None) -> float | None:
    """The kept epoch's validation accuracy from a round's fit summary (None for detection or without a val split)."""
    if not fit or fit.get("metric_name") != "accuracy" or not isinstance(fit.get("best_val_metric"), (int, float)):
        return None
    return float(fit["best_val_metric"])


class RoundManager:
    def __init__(self, store, registry: Registry, config: RoundsConfig, rollout=None,
                 on_report: Callable[[RoundReport], None] | None = None, *, runs_jobs: bool = True,
                 owner: str | None = None, lease_s: float = 60.0) -> None:
        self.store = store
        # Round jobs live in the store (trainer/rounds/jobs.py): any process may enqueue, cancel and read
        # progress; a process with ``runs_jobs`` also trains (what `edgeloop worker` and the embedded server do).
        self.runs_jobs = runs_jobs
        self.jobs = RoundJobs(store, owner or f"{socket.gethostname()}:{os.getpid()}", lease_s)
        self._local: int | None = None  # the round this process trains now
        self._lost: set[int] = set()  # rounds whose lease another worker took over: never registered here
        self._remote: int | None = None  # a round this process enqueued for another worker
        self._beat: threading.Thread | None = None
        self._server: threading.Thread | None = None
        self.registry = registry
        self.config = config
        self.rollout = rollout  # trainer.publish.rollout.RolloutController, or None: never auto-publish
        self.on_report = on_report
        self.worker = RoundWorker(self._finished)
        self.last: RoundReport | None = None
        self.rollouts: list = []  # futures of rollouts started by rounds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._done = threading.Event()
        self._examples: dict[int, list] = {}  # round id -> its snapshot, for the same-split gate
        self._recover()

    def _recover(self) -> None:
        """Rounds left "running" without an owner cannot finish: say so, once, at start-up.

        A round with an owner is a job: when its worker died, another takes it over once the lease expires.
        """
        n = self.jobs.fail_orphans()
        if n:
            log.warning("%d round(s) were running when the server last stopped: marked failed", n)

    # -- trigger --------------------------------------------------------------
    def check_trigger(self) -> trigger.TriggerDecision:
        """Start a round if the batch of corrections is reached (and none runs)."""
        project = self.store.project()
        count = self.config.trigger_count
        d = trigger.decide(trigger.count_new_labels(self.store, count), project.batch_size,
                           self.worker.running or self.jobs.active() is not None, count)
        if d.start:
            try:
                self.start_round(d.reason)
            except Busy:
                pass
        return d

    def start_auto(self) -> None:
        """Poll the trigger in the background (no-op when ``auto_start`` is off)."""
        if self._poller is None and self.config.auto_start:
            self._poller = threading.Thread(target=self._poll, name="round-trigger", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.config.poll_s):
            try:
                self.check_trigger()
            except Exception:  # a failing check must not end automatic rounds for good
                log.exception("round trigger check failed")

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.worker.cancel()
        self.worker.join(timeout)
        for t in (self._poller, self._beat, self._server):
            if t is not None:
                t.join(timeout)

    # -- rounds -----------------------------------------------------------------
    def start_round(self, reason: str = "manual") -> int:
        """Enqueue a round and, with ``runs_jobs``, snapshot the labelled examples and start it here.

        Returns the round id; raises Busy while a round is queued or running in any process.
        """
        with self._lock:
            if not self.runs_jobs:
                round_id = self.jobs.enqueue(reason)
                self._remote = round_id
                self._done.clear()
                log.info("round %d queued (%s) for a worker", round_id, reason)
                return round_id
            if self.worker.running:
                raise Busy(f"round {self.worker.progress()['round_id']} is running")
            # The start time is taken before the snapshot: a correction made in between is in this
            # round's data and also counts towards the next batch, rather than in neither.
            started = time.time()
            if self.config.synthetic is not None:
                self._mix_synthetic()
            round_id = self.jobs.enqueue(reason, started=started, claim=True)
            self._start_job(round_id, reason)
            return round_id

    def _start_job(self, round_id: int, reason: str) -> None:
        """Snapshot the examples and start the worker for a round this process holds (under ``_lock``)."""
        examples = self.store.examples()
        name = self.config.model_name
        current = self.registry.current(name)
        self.store.write(lambda db: db.execute("UPDATE rounds SET detail = ? WHERE id = ?", [
            json.dumps({"reason": reason, "examples": len(examples)}), round_id]))
        self._done.clear()
        self._local, self._remote = round_id, None
        try:
            if self.config.work_dir is None:
                raise ValueError("RoundsConfig.work_dir is not set")
            out_dir = Path(self.config.work_dir) / f"round-{round_id:04d}"
            spec = RoundSpec(round_id=round_id, examples=examples, config=dict(self.config.train),
                             out_dir=str(out_dir), name=name, version=self.registry.latest_version(name) + 1,
                             parent=current.checkpoint_path if current and current.checkpoint_path else None,
                             existing_splits={e.id: e.split for e in examples if e.split},
                             labels=tuple(self.store.project().labels))
            self._examples = {round_id: examples}
            self.worker.start(spec)
        except BaseException as e:
            self._mark_round(round_id, "failed", {"error": f"the worker did not start: {e}"})
            self._local = None
            self._done.set()
            raise
        self._start_heartbeat()
        log.info("round %d started (%s): %d examples, parent %s", round_id, reason, len(examples),
                 f"v{current.version}" if current else "none")

    def _mix_synthetic(self) -> None:
        next_round = self.store.db.read().execute("SELECT coalesce(max(id), 0) + 1 FROM rounds").fetchone()[0]
        try:
            top_up(self.store, self.config.synthetic, int(next_round))
        except Exception:  # a broken generator must not stop the loop from training on real labels
            log.exception("synthetic mix failed; the round trains on the real examples only")

    def trigger_state(self) -> dict:
        """What the trigger counts and how far along the batch is, for the models page."""
        count = self.config.trigger_count
        return {"count": count, "counted": trigger.count_new_labels(self.store, count),
                "batch_size": self.store.project().batch_size, "auto_start": self.config.auto_start,
                "synthetic": None if self.config.synthetic is None else synthetic_state(self.store,
                                                                                        self.config.synthetic)}

    def progress(self) -> dict:
        """The active round (else the latest) as the store has it; live epochs when it trains here."""
        p = self._job_progress()
        try:
            p["trigger"] = self.trigger_state()
        except Exception:  # e.g. the store closing at shutdown: progress is still worth showing
            log.exception("could not read the trigger's count")
            p["trigger"] = None
        p["last"] = None if self.last is None else {
            "round_id": self.last.round_id, "state": self.last.state, "version": self.last.version,
            "gate": self.last.gate.to_dict() if self.last.gate else None, "error": self.last.error,
            "rollout_started": self.last.rollout_started, "timings": self.last.timings}
        finished = self.jobs.last_finished()
        if finished is not None and (self.last is None or finished.round_id > self.last.round_id):
            d = finished.detail  # trained by another process: the store has what it recorded
            p["last"] = {"round_id": finished.round_id, "state": finished.state, "version": d.get("version"),
                         "gate": d.get("gate"), "error": d.get("error", "") or "",
                         "rollout_started": bool(d.get("rollout_started")), "timings": d.get("timings") or {}}
        return p

    def _job_progress(self) -> dict:
        job = self.jobs.active() or self.jobs.latest()
        if job is None:
            return {"state": "idle", "round_id": None, "epochs": []}
        p = {"state": job.state, "round_id": job.round_id, "epochs": job.epochs, "started": job.started,
             "finished": job.finished, "error": job.detail.get("error", "") or "",
             "cancel_requested": job.cancel_requested, "owner": job.owner, "attempts": job.attempts,
             "reason": job.reason}
        if self._local == job.round_id:
            p["epochs"] = self.worker.progress()["epochs"]
        return p

    def cancel(self) -> bool:
        """Cancel the queued or running round, whichever process runs it; False when none is active."""
        job = self.jobs.request_cancel()
        if job is None:
            return self.worker.cancel()
        if self._local == job.round_id:
            self.worker.cancel()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the round started here (or queued here for a worker) has been fully handled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remote = self._remote
            if remote is not None and self._local is None:
                job = self.jobs.get(remote)
                if job is not None and job.state not in ("queued", "running"):
                    self.last = _report_of(job)
                    self._remote = None
                    self._done.set()
            left = None if deadline is None else deadline - time.monotonic()
            if self._done.wait(0.25 if left is None else max(0.0, min(0.25, left))):
                return True
            if left is not None and left <= 0:
                return False

    # -- jobs: claim, heartbeat ------------------------------------------------------
    def serve_jobs(self, poll_s: float = 2.0) -> None:
        """Claim rounds other processes enqueued (or whose worker died) and train them here."""
        if self._server is None and self.runs_jobs:
            self._server = threading.Thread(target=self._serve, args=(poll_s,), name="round-jobs", daemon=True)
            self._server.start()

    def _serve(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                if self._local is None and not self.worker.running:
                    job = self.jobs.claim()
                    if job is not None:
                        self._run_claimed(job)
            except Exception:  # a failing claim must not end this worker
                log.exception("claiming a round job failed")

    def _run_claimed(self, job: Job) -> None:
        name = self.config.model_name
        done = [m for m in self.registry.models(name) if m.config.get("round") == job.round_id]
        if done:  # its last worker died after registering: the model is there, do not train it twice
            self.jobs.finish(job.round_id, "done", {"version": done[0].version, "error": "",
                                                    "note": "registered before its worker stopped",
                                                    "val_accuracy": val_accuracy(done[0].config.get("fit"))})
            return
        log.warning("round %d claimed (attempt %d, reason %s)", job.round_id, job.attempts, job.reason)
        with self._lock:
            if self.config.synthetic is not None:
                self._mix_synthetic()
            self._start_job(job.round_id, job.reason)

    def _start_heartbeat(self) -> None:
        if self._beat is None or not self._beat.is_alive():
            self._beat = threading.Thread(target=self._heartbeat, name="round-heartbeat", daemon=True)
            self._beat.start()

    def _heartbeat(self) -> None:
        """Renew the lease of the round trained here, store its epochs, pass on cancels from any process."""
        every = min(1.0, self.jobs.lease_s / 4)
        while not self._stop.wait(every):
            round_id = self._local
            if round_id is None or not self.worker.running:
                continue
            try:
                held, cancel = self.jobs.heartbeat(round_id, self.worker.progress()["epochs"])
            except Exception:  # the store is briefly away: the lease has slack for a few misses
                log.exception("heartbeat of round %d failed", round_id)
                continue
            if not held:
                log.error("round %d: another worker took over its lease; stopping it here", round_id)
                self._lost.add(round_id)
                self.worker.cancel()
            elif cancel:
                self.worker.cancel()

    # -- completion ---------------------------------------------------------------
    def _finished(self, outcome: RoundOutcome) -> None:
        if outcome.round_id in self._lost:  # its new worker registers it; a second model would be a duplicate
            self._local = None
            self._done.set()
            return
        report = RoundReport(outcome.round_id, outcome.state, error=outcome.error)
        try:
            if outcome.state == "done":
                report = self._register(outcome)
                report = replace(report, timings={"process": outcome.finished - outcome.started,
                                                  "train": outcome.result["seconds"], **report.timings})
        except Exception as e:
            log.exception("round %d finished but could not be registered", outcome.round_id)
            report = RoundReport(outcome.round_id, "failed", error=f"registration failed: {e}")
        finally:
            try:
                self._mark_round(outcome.round_id, report.state, {
                    "version": report.version, "error": report.error[:2000],
                    "gate": report.gate.to_dict() if report.gate else None, "timings": report.timings,
                    "rollout_started": report.rollout_started,
                    # the review queue's cold start reads it (trainer/store/review.py): is the model still weak?
                    "val_accuracy": val_accuracy((outcome.result or {}).get("fit"))
                    if report.state == "done" else None})
            except Exception:  # e.g. the store closed at shutdown: the report below still stands
                log.exception("could not record the end of round %d in the store", outcome.round_id)
            self.last = report
            self._local = None
            self._done.set()
        if self.on_report is not None:
            self.on_report(report)

    def _mark_round(self, round_id: int, state: str, detail: dict) -> None:
        # Fenced by the owner (trainer/rounds/jobs.py): a worker that lost its lease cannot end the round.
        epochs = self.worker.progress()["epochs"] if self._local == round_id else None
        if not self.jobs.finish(round_id, state, detail, epochs):
            log.error("round %d belongs to another worker now; its end here is not recorded", round_id)

    def _register(self, outcome: RoundOutcome) -> RoundReport:
        r = outcome.result
        t0 = time.perf_counter()
        self.store.set_splits(r["splits"])
        name = self.config.model_name
        current = self.registry.current(name)
        metrics = {k: v for k, v in r["metrics"].items() if k not in ("per_class", "confusion")}
        record = self.registry.register(NewModel(
            name=name, file=Path(r["onnx"]), task=r["task"], labels=tuple(r["labels"]),
            parent_version=current.version if current else 0, dataset_version=r["dataset_version"],
            config={"train": self.config.train, "round": outcome.round_id, "fit": r["fit"],
                    "split_counts": r["split_counts"], "imbalance": r["imbalance"], "seconds": r["seconds"]},
            metrics=metrics, per_class=r["metrics"].get("per_class", {}), overfit=r["overfit"],
            report_path=r["report"].get("record", ""),
            checkpoint=Path(r["checkpoint"]), examples=r["splits"]))
        t1 = time.perf_counter()
        test = [e for e in self._examples.pop(outcome.round_id, []) if r["splits"].get(e.id) == "test"]
        decision = self.judge(record, current, test)
        timings = {"register": t1 - t0, "gate": time.perf_counter() - t1}
        # Drift reference (trainer.drift, issue 14): the candidate's confidence histogram on its test split.
        store_reference(self.registry, name, record.version, record.file_path, test)
        if not decision.publish:
            self.registry.set_state(name, record.version, "rejected", "; ".join(decision.reasons)[:1000],
                                    gate=decision.to_dict())
            return RoundReport(outcome.round_id, "done", record.version, decision, timings=timings)
        self.registry.set_state(name, record.version, "candidate", "passed the gate", gate=decision.to_dict())
        started = False
        if self.config.auto_publish and self.rollout is not None:
            self.rollouts.append(self.rollout.roll_out_async(name, record.version))
            started = True
        return RoundReport(outcome.round_id, "done", record.version, decision, rollout_started=started,
                           timings=timings)

    def judge(self, candidate: ModelRecord, current: ModelRecord | None, test: list | None = None) -> GateDecision:
        """The gate, with both models scored on the candidate's frozen test split when it is known.

        Each round's own metrics come from its own test split, which grows with
        new data; comparing those would compare different exams. So both ONNX
        files are run again, through the agents' runtime, on the same examples.
        """
        if current is None or not test or not Path(current.file_path).is_file():
            return gate_decide(candidate.metrics, current.metrics if current else None, candidate.per_class,
                               current.per_class if current else None, candidate.overfit, self.config.gate)
        cand, cur = same_split_metrics(candidate.file_path, current.file_path, test, candidate.labels,
                                       candidate.task)
        log.info("gate on %d test examples: candidate v%d %s, fleet v%d %s", len(test), candidate.version,
                 {k: v for k, v in cand.items() if k != "per_class"}, current.version,
                 {k: v for k, v in cur.items() if k != "per_class"})
        return gate_decide(cand, cur, cand["per_class"], cur["per_class"], candidate.overfit, self.config.gate)


def _report_of(job: Job) -> RoundReport:
    """A RoundReport from a finished round's row (a round another process trained)."""
    d = job.detail
    return RoundReport(job.round_id, job.state, d.get("version"), None, d.get("error", "") or "",
                       bool(d.get("rollout_started")), d.get("timings") or {})
