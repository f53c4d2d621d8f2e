"""The staged rollout controller: configured stages, watch health, widen stage by stage or halt and roll back.

``FleetWatch`` keeps the latest Status and Telemetry of every agent (fed by
an MQTT subscription to the status and telemetry filters; a collector may be
subscribed too). ``RolloutController.roll_out`` walks the policy's stages
(``RolloutPolicy.plan()``: the configured list, or canary -> fleet): it
announces each stage's cumulative cohort (``stages.stage_cohort``), asks the
pure ``health.decide`` every tick over every agent announced to so far, and
after the stage's hold widens to the next stage, or halts. A halt
re-announces the previous fleet model under a new, higher version (note
"rollback to N") so the agents that took the new version go back while their
downgrade protection still holds; agents outside the cohort never see it.

Progress (stage, its start, pauses, members) is written to the registry's
``rollouts`` table at every step, so ``resume_active()`` (called by
``PublishingService.open``) keeps watching a rollout a restarted server left
running or paused. Pause freezes the hold clock and never widens (a failure
still halts); resume continues the hold; abort halts and rolls back.

Threads: rollouts run one at a time on the controller's single worker
thread; ``pause``/``resume``/``abort``/``status`` are called from web
requests and only flip fields under a lock and write one registry row. The
worker waits only on ``sleep`` (``tick_s``), the registry's writer and broker
acknowledgements of announcements.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

from protocol import ProtocolError, Status, Telemetry, decode
from protocol.manifest import Cohort

from .health import AgentView, CanaryHealth, RolloutDecision, RolloutPolicy, canary_health, decide
from .publisher import Published, Publisher, PublishError
from .registry import ModelRecord, Registry
from .stages import RolloutStage, describe, stage_cohort

log = logging.getLogger(__name__)


class FleetWatch:
    """Latest health of every agent, from MQTT messages (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started_at = clock()
        self.errors: Counter[str] = Counter()  # undecodable messages by reason
        self._views: dict[str, AgentView] = {}
        self._target: int | None = None
        self._lock = threading.Lock()
        # Called with every Telemetry after it is recorded, on the caller's (paho's) thread: must not block.
        self.telemetry_listeners: list[Callable[[Telemetry], None]] = []

    def on_message(self, topic: str, payload: bytes, _retained: bool) -> None:
        if not payload:  # a cleared retained status
            return
        try:
            msg = decode(topic, payload)
        except ProtocolError as e:
            with self._lock:
                self.errors[e.reason] += 1
            log.warning("rollout watch: bad message on %s: %s", topic, e)
            return
        now = self.clock()
        with self._lock:
            if isinstance(msg, Status):
                view = self._views.setdefault(msg.agent_id, AgentView(msg.agent_id))
                view.status, view.status_at = msg, now
            elif isinstance(msg, Telemetry):
                self._telemetry(self._views.setdefault(msg.agent_id, AgentView(msg.agent_id)), msg)
        if isinstance(msg, Telemetry):
            for listener in self.telemetry_listeners:
                listener(msg)

    def _telemetry(self, view: AgentView, t: Telemetry) -> None:
        if self._target is not None and t.model_version == self._target:
            if view.first_new is None:
                view.first_new = t
            view.last_new = t
        else:
            view.before = t

    def track(self, version: int) -> None:
        """Start attributing telemetry of ``version`` to the new model."""
        with self._lock:
            self._target = version
            for view in self._views.values():
                view.first_new = view.last_new = None

    def agents(self) -> dict[str, tuple[str, ...]]:
        """Online agents (agent id -> its cohort groups); a retained "offline" will is no canary."""
        with self._lock:
            return {a: v.groups for a, v in self._views.items() if v.status is not None and v.status.state == "online"}

    def views(self, agent_ids: list[str]) -> list[AgentView]:
        with self._lock:
            return [replace(self._views.get(a) or AgentView(a)) for a in agent_ids]

    def status(self, agent_id: str) -> Status | None:
        with self._lock:
            v = self._views.get(agent_id)
            return v.status if v else None



@dataclass(frozen=True)
class RolloutResult:
    name: str
    version: int
    outcome: str  # fleet | halted | interrupted (server shutdown while watching)
    canaries: list[str]  # the first stage's agents
    reasons: list[str]
    health: list[CanaryHealth] = field(default_factory=list)
    rollback_version: int | None = None
    seconds: float = 0.0
    stage: int = 0  # 1-based: the stage reached
    members: list[str] = field(default_factory=list)  # every agent announced to (cumulative, before "everyone")

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "outcome": self.outcome, "canaries": self.canaries,
                "reasons": self.reasons, "rollback_version": self.rollback_version, "seconds": self.seconds,
                "stage": self.stage, "members": self.members, "health": [h.__dict__ for h in self.health]}


@dataclass
class Run:
    """One rollout's progress; mirrored in the registry's ``rollouts`` row ``id``."""

    id: int
    name: str
    version: int
    previous_version: int
    plan: tuple[RolloutStage, ...]
    stage: int = 0  # 0-based index into plan
    stage_started: float | None = None  # None: the stage is not announced yet
    paused_at: float | None = None
    paused_s: float = 0.0  # paused time inside the current stage
    carried: tuple[str, ...] = ()  # agents named by top-ups so far (stay in later cohorts)
    members: dict[str, list[str]] = field(default_factory=dict)  # stage index -> cumulative agents

    @classmethod
    def from_row(cls, row: dict) -> "Run":
        return cls(row["id"], row["name"], row["version"], row["previous_version"],
                   tuple(RolloutStage.model_validate(s) for s in row["plan"]), row["stage"], row["stage_started"],
                   row["paused_at"], row["paused_s"], tuple(row["carried"]), dict(row["members"]))

    def held(self, now: float) -> float:
        """Seconds of the current stage's hold served, pauses excluded."""
        if self.stage_started is None:
            return 0.0
        end = self.paused_at if self.paused_at is not None else now
        return max(0.0, end - self.stage_started - self.paused_s)

    def announced(self) -> bool:
        return any(self.members.values()) or (self.stage_started is not None and self.plan[self.stage].reaches_everyone)


_OUTCOMES = {"done": "fleet", "halted": "halted", "aborted": "halted"}  # a registry row's state -> outcome


class RolloutController:
    def __init__(self, registry: Registry, publisher: Publisher, watch: FleetWatch, policy: RolloutPolicy,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.registry = registry
        self.publisher = publisher
        self.watch = watch
        self.policy = policy
        self.clock = clock
        self.sleep = sleep
        # One rollout at a time: two would fight over the retained announcement.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rollout")
        self._lock = threading.Lock()
        self._cancel = threading.Event()  # abort()/cancel_current() halts the rollout in progress
        self._closing = threading.Event()  # close() stops watching without deciding anything
        self._status: dict = {"state": "idle"}
        self._status_lock = threading.Lock()  # guards _status and the fields of _run that web requests flip
        self._run: Run | None = None

    # -- what web requests call ---------------------------------------------------------------------
    def status(self, name: str | None = None) -> dict:
        """Where the rollout in progress (or the last one of ``name``, from the registry) stands."""
        with self._status_lock:
            status, run = dict(self._status), self._run
            if run is not None and (name is None or run.name == name):
                status.update(self._progress(run))
                return status
        if name is not None and status.get("name") != name:
            rows = self.registry.rollouts(name, limit=1)
            if not rows:
                return {"state": "idle"}
            row = rows[0]
            active = row["state"] in ("running", "paused")
            return {"state": row["state"] if active else "done", "name": name, **self._progress(Run.from_row(row)),
                    "outcome": None if active else _OUTCOMES.get(row["state"], row["state"]),
                    "reasons": row["reasons"]}
        return status

    def _progress(self, run: Run) -> dict:
        """Stage k of n, per stage who it added and how many of them run the new version, hold left."""
        stages, before = [], set()
        for i, stage in enumerate(run.plan):
            members = set(run.members.get(str(i), ()))
            added = sorted(members - before)
            before |= members
            on_new = sum(1 for a in added if (s := self.watch.status(a)) is not None and
                         s.model_version == run.version and s.model_state == "ok")
            stages.append({"name": stage.name, "who": describe(stage), "hold_s": stage.hold_s, "agents": len(added),
                           "on_new": on_new, "state": "done" if i < run.stage else
                           "current" if i == run.stage else "waiting"})
        hold = run.plan[run.stage].hold_s
        return {"rollout_id": run.id, "name": run.name, "version": run.version, "stage": run.stage + 1,
                "stages": len(run.plan), "stage_name": run.plan[run.stage].name, "plan": stages,
                "paused": run.paused_at is not None,
                "hold_left_s": max(0.0, hold - run.held(self.clock())) if run.stage_started is not None else hold}

    def _active(self, name: str | None) -> Run | None:
        run = self._run
        if run is None or (name is not None and run.name != name) or self._status.get("state") in ("done", "error"):
            return None
        return run

    def pause(self, name: str | None = None) -> bool:
        """Freeze the hold clock of the rollout in progress: it never widens while paused (failures still halt)."""
        with self._status_lock:
            run = self._active(name)
            if run is None or run.paused_at is not None:
                return False
            run.paused_at = self.clock()
            self._status["state"] = "paused"
        self.registry.update_rollout(run.id, state="paused", paused_at=run.paused_at)
        log.warning("rollout of %s v%d paused at stage %d", run.name, run.version, run.stage + 1)
        return True

    def resume(self, name: str | None = None) -> bool:
        with self._status_lock:
            run = self._active(name)
            if run is None or run.paused_at is None:
                return False
            run.paused_s += max(0.0, self.clock() - run.paused_at)
            run.paused_at = None
            self._status["state"] = "watching"
        self.registry.update_rollout(run.id, state="running", paused_at=None, paused_s=run.paused_s)
        log.warning("rollout of %s v%d resumed at stage %d", run.name, run.version, run.stage + 1)
        return True

    def cancel_current(self, name: str | None = None) -> bool:
        """Abort: halt the rollout in progress (of ``name``, when given) and roll back; False when none runs."""
        with self._status_lock:
            if self._active(name) is None or self._status.get("state") not in ("watching", "paused", "starting"):
                return False
        self._cancel.set()
        return True

    abort = cancel_current

    @contextlib.contextmanager
    def _exclusive(self):
        """For manual actions: fail at once, rather than block a web request, while a rollout runs."""
        if not self._lock.acquire(blocking=False):
            status = self.status()
            raise PublishError(f"a staged rollout of {status.get('name')} v{status.get('version')} is in progress;"
                               " abort it first (it rolls back) or wait for it to finish")
        try:
            yield
        finally:
            self._lock.release()

    def _set_status(self, **fields: object) -> None:
        with self._status_lock:
            self._status = {**self._status, **fields}

    def close(self) -> None:
        """Stop: a rollout being watched is left as it is (persisted running or paused), neither widened nor
        rolled back; the next ``resume_active`` continues it."""
        self._closing.set()
        self._executor.shutdown(wait=True, cancel_futures=True)

    # -- running ------------------------------------------------------------------------------------
    def roll_out_async(self, name: str, version: int, cancel: threading.Event | None = None
                       ) -> "Future[RolloutResult]":
        return self._submit(self.roll_out, name, version, cancel)

    def _submit(self, fn: Callable, *args) -> "Future[RolloutResult]":
        fut = self._executor.submit(fn, *args)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception() is None or log.error(
            "rollout %s failed: %s", args[:2], f.exception(), exc_info=f.exception()))
        return fut

    def resume_active(self) -> list["Future[RolloutResult]"]:
        """Keep watching every rollout the registry says was running or paused (after a restart)."""
        return [self._submit(self._resume_row, row) for row in reversed(self.registry.rollouts(active=True))]

    def _resume_row(self, row: dict) -> RolloutResult:
        run = Run.from_row(row)
        log.warning("resuming the rollout of %s v%d at stage %d of %d (%s)", run.name, run.version, run.stage + 1,
                    len(run.plan), row["state"])
        with self._lock:
            return self._guarded(run, None)

    def roll_out(self, name: str, version: int, cancel: threading.Event | None = None) -> RolloutResult:
        """Walk the stages, watching each (blocking; ``cancel`` halts and rolls back)."""
        with self._lock:
            self.registry.get(name, version)  # ModelNotFound before anything is recorded
            previous = self.registry.current(name)
            plan = self.policy.plan()
            rid = self.registry.start_rollout(name, version, previous.version if previous else 0,
                                              [s.model_dump(mode="json") for s in plan])
            return self._guarded(Run(rid, name, version, previous.version if previous else 0, plan), cancel)

    def _guarded(self, run: Run, cancel: threading.Event | None) -> RolloutResult:
        self._cancel.clear()
        with self._status_lock:
            self._run = run
            self._status = {"state": "paused" if run.paused_at is not None else "starting", "name": run.name,
                            "version": run.version, "canaries": [], "health": [], "reasons": [], "outcome": None}
        try:
            result = self._drive(run, cancel)
        except BaseException as e:
            self._set_status(state="error", reasons=[str(e)])
            self.registry.update_rollout(run.id, state="halted", reasons=[f"error: {e}"[:1000]])
            raise
        if result.outcome != "interrupted":
            self._set_status(state="done", outcome=result.outcome, reasons=result.reasons,
                             rollback_version=result.rollback_version)
        return result

    def _drive(self, run: Run, cancel: threading.Event | None) -> RolloutResult:
        t0 = self.clock()
        wait = self.watch.started_at + self.policy.discovery_s - self.clock()
        if wait > 0:
            self.sleep(wait)
        self.watch.track(run.version)
        reasons: list[str] = []
        health: list[CanaryHealth] = []
        while True:
            stage = run.plan[run.stage]
            if run.stage_started is None:
                self._enter(run, reasons)
            if stage.reaches_everyone and stage.hold_s <= 0:
                break
            decision, health = self._watch_stage(run, cancel)
            if decision is None:
                log.warning("rollout of %s v%d interrupted by shutdown at stage %d: it resumes when the server"
                            " starts again", run.name, run.version, run.stage + 1)
                self.registry.record_event(run.name, run.version, "rollout_interrupted", {"stage": run.stage + 1})
                return self._result(run, "interrupted", ["the server stopped"], health, t0)
            self.registry.record_event(run.name, run.version, f"rollout_{decision.action}", {
                "stage": run.stage + 1, "stage_name": stage.name, "reasons": decision.reasons,
                "health": [h.__dict__ for h in health]})
            if decision.action == "halt":
                return self._halt(run, decision, health, cancel, t0)
            reasons = decision.reasons
            if stage.reaches_everyone:
                break
            with self._status_lock:
                run.stage, run.stage_started, run.paused_s = run.stage + 1, None, 0.0
            self.registry.update_rollout(run.id, stage=run.stage, stage_started=None, paused_s=0.0)
        self.registry.set_state(run.name, run.version, "fleet", "; ".join(reasons)[:1000])
        self.registry.update_rollout(run.id, state="done", reasons=reasons)
        return self._result(run, "fleet", reasons, health, t0)

    def _enter(self, run: Run, reasons: list[str]) -> None:
        """Announce stage ``run.stage`` to its cumulative cohort and persist it."""
        k, stage = run.stage, run.plan[run.stage]
        cohort, members = stage_cohort(run.name, self.watch.agents(), run.plan, k, run.carried)
        if not stage.reaches_everyone:  # an earlier stage's agent that went offline stays watched
            members = sorted(set(members) | set(run.members.get(str(k - 1), ())))
        if members or stage.reaches_everyone:
            self.publisher.announce(run.name, run.version, cohort)  # raises before any state change on a bad model
        now = self.clock()
        with self._status_lock:
            run.carried, run.members[str(k)], run.stage_started = cohort.agents, members, now
            if run.paused_at is not None:  # paused before the announcement: the hold starts paused
                run.paused_at = now
        self.registry.update_rollout(run.id, stage=k, stage_started=now, carried=list(run.carried),
                                     members=run.members, paused_at=run.paused_at)
        who = "everyone" if stage.reaches_everyone else ", ".join(members) or "none known"
        note = f"stage {k + 1}/{len(run.plan)} {stage.name}: {who}"
        if stage.reaches_everyone:
            note += ("; " + "; ".join(reasons)) if reasons else ""
        self.registry.set_state(run.name, run.version, "fleet" if stage.reaches_everyone else "canary", note[:1000])
        log.info("rollout of %s v%d: %s", run.name, run.version, note)

    def _watch_stage(self, run: Run, cancel: threading.Event | None
                     ) -> tuple[RolloutDecision | None, list[CanaryHealth]]:
        """Tick until the stage's decision is widen or halt; (None, health) when the server stops."""
        stage = run.plan[run.stage]
        policy = self.policy.for_stage(stage)
        members = run.members.get(str(run.stage), [])
        while True:
            now = self.clock()
            with self._status_lock:
                paused, start = run.paused_at is not None, run.stage_started + run.paused_s
                frozen = run.paused_at if paused else now
            health = [canary_health(v, run.version, run.stage_started, policy) for v in self.watch.views(members)]
            decision = decide(health, start, frozen, policy)
            if paused and decision.action == "widen":
                decision = replace(decision, action="wait")
            if self._cancel.is_set() or (cancel is not None and cancel.is_set()):
                decision = replace(decision, action="halt", reasons=["cancelled by an operator"])
            self._set_status(state="paused" if paused else "watching", canaries=members,
                             health=[h.__dict__ for h in health], ok=decision.ok, failed=decision.failed,
                             pending=decision.pending, verdict=decision.action)
            if decision.action != "wait":
                return decision, health
            if self._closing.is_set():
                return None, health
            self.sleep(self.policy.tick_s)

    def _halt(self, run: Run, decision: RolloutDecision, health: list[CanaryHealth],
              cancel: threading.Event | None, t0: float) -> RolloutResult:
        cancelled = self._cancel.is_set() or (cancel is not None and cancel.is_set())
        stage = run.plan[run.stage]
        reason = (("cancelled" if cancelled else f"canaries failed at stage {run.stage + 1} ({stage.name})")
                  + ": " + "; ".join(decision.reasons))
        self.registry.set_state(run.name, run.version, "halted", reason[:1000])
        log.error("rollout of %s v%d halted: %s", run.name, run.version, reason)
        previous = self.registry.get(run.name, run.previous_version) if run.previous_version else None
        back = self._restore(run.name, previous) if run.announced() else None  # nothing went out: nothing to undo
        self.registry.update_rollout(run.id, state="aborted" if cancelled else "halted", reasons=decision.reasons)
        return self._result(run, "halted", decision.reasons, health, t0, back.record.version if back else None)

    def _result(self, run: Run, outcome: str, reasons: list[str], health: list[CanaryHealth], t0: float,
                rollback_version: int | None = None) -> RolloutResult:
        members = [m for k, m in sorted(run.members.items(), key=lambda kv: int(kv[0]))
                   if not run.plan[int(k)].reaches_everyone]
        return RolloutResult(run.name, run.version, outcome, members[0] if members else [], reasons, health,
                             rollback_version, self.clock() - t0, run.stage + 1, members[-1] if members else [])

    def _restore(self, name: str, previous: ModelRecord | None) -> Published | None:
        if previous is None:
            # Nothing to go back to: stop agents that connect later from installing the halted model.
            self.publisher.withdraw(name)
            return None
        record = self.registry.register_rollback(name, previous.source_version or previous.version)
        return self.publisher.announce(name, record.version, Cohort(stage="fleet"))

    # -- manual actions -----------------------------------------------------------------------------
    def rollback(self, name: str, to: int | None = None) -> Published:
        """Re-announce an earlier model to the whole fleet under a new, higher version."""
        with self._exclusive():
            current = self.registry.current(name)
            target = self.registry.get(name, to) if to is not None else self._previous(name, current)
            if current is not None and current.version != target.version:
                self.registry.set_state(name, current.version, "rolled_back", f"rolled back to v{target.version}")
            for m in self.registry.models(name):
                if m.state == "canary":
                    self.registry.set_state(name, m.version, "halted", "superseded by a rollback")
            self.registry.end_active_rollouts(name)
            record = self.registry.register_rollback(name, target.source_version or target.version)
            return self.publisher.announce(name, record.version, Cohort(stage="fleet"))

    def _previous(self, name: str, current: ModelRecord | None) -> ModelRecord:
        if current is None:
            raise PublishError(f"{name} has no fleet model to roll back from; pass --to VERSION")
        for m in self.registry.models(name):  # newest first
            if m.version < current.version and m.state in ("fleet", "rolled_back") and m.sha256 != current.sha256:
                return m
        raise PublishError(f"{name} has no earlier fleet model than v{current.version}; pass --to VERSION")

    def publish(self, name: str, version: int, cohort: Cohort) -> Published:
        """A manual announcement to a chosen cohort, without watching."""
        with self._exclusive():
            published = self.publisher.announce(name, version, cohort)
            self.registry.end_active_rollouts(name)
            state = "fleet" if cohort.stage == "fleet" else "published"
            self.registry.set_state(name, version, state, f"published by hand to {cohort.stage}")
            return published
