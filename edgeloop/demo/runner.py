"""Bring the whole loop up in one process tree, run it, and take it down cleanly."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeloop.broker import LocalBroker, free_port
from protocol.files import atomic_write_text

from .classification import ClassificationTask, DemoError
from .fleet import AgentProcesses
from .layout import DemoConfig, Layout, agent_id, ensure_keys, ensure_token

log = logging.getLogger(__name__)
__all__ = ["Demo", "DemoError", "write_json"]


def make_task(cfg: DemoConfig, layout: Layout):
    if cfg.task == "detection":
        from .detection import DetectionTask

        return DetectionTask(cfg, layout)
    return ClassificationTask(cfg, layout)


@dataclass
class Demo:
    cfg: DemoConfig
    layout: Layout = field(init=False)
    stop: threading.Event = field(default_factory=threading.Event)
    task: object = None  # ClassificationTask / DetectionTask; None: the one cfg.task names

    def __post_init__(self) -> None:
        self.layout = Layout(self.cfg.data.resolve())
        self.task = self.task or make_task(self.cfg, self.layout)
        self.model_name = self.task.model_name
        self.broker: LocalBroker | None = None
        self.server = None
        self.agents = AgentProcesses()
        self.oracle = None  # the task's labeller (an oracle, or the teacher's pre-labels accepted)

    # -- up ---------------------------------------------------------------------
    def up(self) -> None:
        from trainer.server.embedded import EmbeddedServer

        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per oracle request otherwise

        cfg, layout = self.cfg, self.layout
        self.task.check()
        layout.make()
        ensure_keys(layout)
        token = ensure_token(layout)
        self.broker = LocalBroker(layout.broker, port=cfg.broker_port or None).start()
        print(f"broker: {self.broker.kind} on {self.broker.host}:{self.broker.port}", flush=True)
        http_port = cfg.http_port or free_port()
        self.server = EmbeddedServer(self.task.server_config(self.broker.port, http_port), token).start()
        self.token = token
        self.ensure_initial_model()
        model_path = Path(self.registry.current(self.model_name).file_path)
        for i in range(cfg.agents):
            d = layout.agent_dir(i)
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "config.toml"
            conf.write_text(self.task.agent_config(i, self.broker.port, model_path))
            self.agents.start(agent_id(i), conf, d / "agent.log")
        if cfg.auto_label or cfg.headless:
            self.oracle = self.task.start_labeller(self.server.url, token)
        print(f"review UI: {self.server.url}login#token={token}\n  (or open {self.server.url}login and paste the "
              f"token {token})", flush=True)

    @property
    def service(self):
        return self.server.service

    @property
    def registry(self):
        return self.service.registry

    def ensure_initial_model(self) -> None:
        """Train, gate and publish the first model from the task's first labelled data, once per data folder."""
        name = self.model_name
        if self.registry.current(name) is not None:
            print(f"resuming: fleet model {name} v{self.registry.current(name).version}", flush=True)
            return
        what = self.task.seed_dataset(self)
        print(f"initial dataset: {what}; training the first model...", flush=True)
        rounds = self.service.rounds
        rounds.start_round("initial model")
        while not rounds.wait(1.0):  # Ctrl-C during the first training stops the demo, not only later
            if self.stop.is_set():
                rounds.cancel()
                rounds.wait(60)
                raise DemoError("stopped while training the first model")
        report = rounds.last
        if report is None or report.state != "done" or not report.rollout_started:
            raise DemoError(f"the initial round did not produce a published model: {report}")
        rounds.rollouts[-1].result(timeout=120)
        record = self.registry.current(name)
        if record is None:
            raise DemoError("the initial model was trained but is not the fleet model")
        print(f"initial model v{record.version}: {_metric(record)[0]} {_metric(record)[1]:.3f} on its test split",
              flush=True)

    # -- rounds -------------------------------------------------------------------
    def wait_for_round(self, after: int, timeout: float = 1800.0):
        rounds = self.service.rounds
        deadline = time.monotonic() + timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            dead = self.agents.check()
            if dead:
                raise DemoError("an agent died:\n" + "\n".join(dead))
            last = rounds.last  # set once a round is fully handled (registered, gated, rollout started)
            if last is not None and last.round_id > after:
                return last
            self.stop.wait(0.5)
        return None

    def wait_agents_on(self, version: int, timeout: float = 180.0) -> int:
        """Agents that run this version or a newer one: with a fast labeller the next rounds may already
        have rolled out by the time this one is summarized."""
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            on = sum(1 for a in self.service.store.fleet()
                     if a["agent_id"].startswith("demo-agent-") and a.get("model_name") == self.model_name
                     and self._runs_at_least(a.get("model_version") or 0, version))
            if on >= self.cfg.agents or time.monotonic() > deadline:
                return on
            self.stop.wait(0.5)
        return 0

    def _runs_at_least(self, running: int, version: int) -> bool:
        """A rollback re-announces an older model under a new number: it counts as that older one."""
        from trainer.publish.registry import ModelNotFound

        if running < version:
            return False
        try:
            record = self.registry.get(self.model_name, running)
        except ModelNotFound:  # not one of this registry's models
            return False
        return (record.source_version or running) >= version

    def round_started(self, round_id: int) -> float:
        row = self.service.store.db.read().execute("SELECT started FROM rounds WHERE id = ?", [round_id]).fetchone()
        return float(row[0]) if row else time.time()

    def summarize(self, report) -> dict:
        entry = {"round": report.round_id, "state": report.state, "labels": 0, "metric": None, "metric_name": None,
                 "model_version": report.version, "rollout": None, "agents_updated": 0, "loop_seconds": None,
                 "gate": report.gate.to_dict() if report.gate else None, "error": report.error}
        if report.state != "done" or report.version is None:
            return entry
        record = self.registry.get(self.model_name, report.version)
        entry["metric_name"], entry["metric"] = _metric(record)
        entry["labels"] = len(self.registry.examples_of(self.model_name, report.version))
        if report.rollout_started:
            entry["rollout"] = self.rounds_rollout_done(report)
            if entry["rollout"] == "fleet":  # a halted rollout rolled the canaries back: nobody was updated
                entry["agents_updated"] = self.wait_agents_on(report.version)
                entry["loop_seconds"] = round(time.time() - self.round_started(report.round_id), 1)
        entry.update(self.task.stream_figures(record.file_path))
        return entry

    def rounds_rollout_done(self, report, timeout: float = 180.0) -> str | None:
        """The outcome of this round's rollout (fleet, halted, ...), once it has one."""
        for future in reversed(self.service.rounds.rollouts):  # later rounds may have started rollouts since
            try:
                result = future.result(timeout=timeout)
            except Exception as e:  # a rollout that failed is a result, not a crash
                log.warning("a rollout of %s: %s", self.model_name, e)
                continue
            if result.version == report.version:
                return result.outcome
        return None

    def run_headless(self) -> dict:
        current = self.registry.current(self.model_name)
        summary = {"model": self.model_name, "task": self.task.task, "initial": {
            "model_version": current.version, "metric_name": _metric(current)[0], "metric": _metric(current)[1],
            "labels": len(self.registry.examples_of(self.model_name, current.version)),
            **self.task.stream_figures(current.file_path)}, "rounds": []}
        print(f"headless: {self.cfg.rounds} round(s) of {self.cfg.batch_size} labels each", flush=True)
        after = self.service.rounds.last.round_id if self.service.rounds.last else 0
        while len(summary["rounds"]) < self.cfg.rounds and not self.stop.is_set():
            report = self.wait_for_round(after)
            if report is None:
                break
            after = report.round_id
            entry = self.summarize(report)
            summary["rounds"].append(entry)
            print("round " + json.dumps(entry), flush=True)
        if self.oracle:
            summary["oracle"] = {"labelled": self.oracle.labelled, "corrected": self.oracle.corrected}
        summary.update(self.task.final_figures(self, summary))
        return summary

    def run_interactive(self) -> None:
        after = self.service.rounds.last.round_id if self.service.rounds.last else 0
        print("running; Ctrl-C stops everything (a second run resumes from the data folder)", flush=True)
        while not self.stop.is_set():
            report = self.wait_for_round(after, timeout=3600)
            if report is not None:
                after = report.round_id
                print("round " + json.dumps(self.summarize(report)), flush=True)

    # -- down -----------------------------------------------------------------------
    def down(self) -> None:
        if self.oracle:
            self.oracle.stop()
        self.agents.stop()
        if self.server:
            self.server.stop()
        if self.broker:
            self.broker.stop()


def _metric(record) -> tuple[str, float]:
    for name in ("accuracy", "map_50", "map"):
        if name in record.metrics:
            return name, float(record.metrics[name])
    return "metric", float("nan")


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
