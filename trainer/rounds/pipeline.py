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


class RoundManager:
    def __init__(self, store, registry: Registry, config: RoundsConfig, rollout=None,
                 on_report: Callable[[RoundReport], None] | None = None) -> None:
        self.store = store
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
        """Rounds left "running" by a server that died cannot finish: say so, once, at start-up."""
        detail = json.dumps({"state": "failed", "error": "the server stopped while this round ran"})
        n = self.store.write(lambda db: db.execute(
            "UPDATE rounds SET state = 'failed', finished = ?, detail = ? WHERE state = 'running'",
            [time.time(), detail]).rowcount)
        if n:
            log.warning("%d round(s) were running when the server last stopped: marked failed", n)

    # -- trigger --------------------------------------------------------------
    def check_trigger(self) -> trigger.TriggerDecision:
        """Start a round if the batch of corrections is reached (and none runs)."""
        project = self.store.project()
        count = self.config.trigger_count
        d = trigger.decide(trigger.count_new_labels(self.store, count), project.batch_size, self.worker.running,
                           count)
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
        if self._poller is not None:
            self._poller.join(timeout)

    # -- rounds -----------------------------------------------------------------
    def start_round(self, reason: str = "manual") -> int:
        """Snapshot the labelled examples and start the worker; returns the round id (raises Busy)."""
        with self._lock:
            if self.worker.running:
                raise Busy(f"round {self.worker.progress()['round_id']} is running")
            # The start time is taken before the snapshot: a correction made in between is in this
            # round's data and also counts towards the next batch, rather than in neither.
            started = time.time()
            if self.config.synthetic is not None:
                self._mix_synthetic()
            examples = self.store.examples()
            name = self.config.model_name
            current = self.registry.current(name)
            round_id = self.store.write(lambda db: db.execute(
                "INSERT INTO rounds (started, state, detail) VALUES (?, 'running', ?)",
                [started, json.dumps({"reason": reason, "examples": len(examples)})]).lastrowid)
            if self.config.work_dir is None:
                raise ValueError("RoundsConfig.work_dir is not set")
            out_dir = Path(self.config.work_dir) / f"round-{round_id:04d}"
            spec = RoundSpec(round_id=round_id, examples=examples, config=dict(self.config.train),
                             out_dir=str(out_dir), name=name, version=self.registry.latest_version(name) + 1,
                             parent=current.checkpoint_path if current and current.checkpoint_path else None,
                             existing_splits={e.id: e.split for e in examples if e.split})
            self._done.clear()
            self._examples = {round_id: examples}
            try:
                self.worker.start(spec)
            except BaseException as e:
                self._mark_round(round_id, "failed", {"error": f"the worker did not start: {e}"})
                self._done.set()
                raise
            log.info("round %d started (%s): %d examples, parent %s", round_id, reason, len(examples),
                     f"v{current.version}" if current else "none")
            return round_id

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
        p = self.worker.progress()
        try:
            p["trigger"] = self.trigger_state()
        except Exception:  # e.g. the store closing at shutdown: progress is still worth showing
            log.exception("could not read the trigger's count")
            p["trigger"] = None
        p["last"] = None if self.last is None else {
            "round_id": self.last.round_id, "state": self.last.state, "version": self.last.version,
            "gate": self.last.gate.to_dict() if self.last.gate else None, "error": self.last.error,
            "rollout_started": self.last.rollout_started, "timings": self.last.timings}
        return p

    def cancel(self) -> bool:
        return self.worker.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running round has been fully handled (registered, gated, handed over)."""
        return self._done.wait(timeout)

    # -- completion ---------------------------------------------------------------
    def _finished(self, outcome: RoundOutcome) -> None:
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
                    "gate": report.gate.to_dict() if report.gate else None, "timings": report.timings})
            except Exception:  # e.g. the store closed at shutdown: the report below still stands
                log.exception("could not record the end of round %d in the store", outcome.round_id)
            self.last = report
            self._done.set()
        if self.on_report is not None:
            self.on_report(report)

    def _mark_round(self, round_id: int, state: str, detail: dict) -> None:
        # The store owns the rounds table; it has no round API yet, so this goes through its writer.
        self.store.write(lambda db: db.execute("UPDATE rounds SET finished = ?, state = ?, detail = ? WHERE id = ?",
                                               [time.time(), state, json.dumps({"state": state, **detail}),
                                                round_id]))

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
