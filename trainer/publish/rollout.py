"""The staged rollout controller: canary cohort, watch health, widen to the fleet or halt and roll back.

``FleetWatch`` keeps the latest Status and Telemetry of every agent (fed by
an MQTT subscription to the status and telemetry filters; a collector may be
subscribed too). ``RolloutController.roll_out`` announces to the canaries,
asks the pure ``health.decide`` every tick, then widens or halts. A halt
re-announces the previous fleet model under a new, higher version (note
"rollback to N") so the canaries go back while agents' downgrade protection
still holds; agents outside the canary cohort never see the bad version.
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

from .health import AgentView, CanaryHealth, RolloutPolicy, canary_health, choose_canaries, decide
from .publisher import Published, Publisher, PublishError
from .registry import ModelRecord, Registry

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
    canaries: list[str]
    reasons: list[str]
    health: list[CanaryHealth] = field(default_factory=list)
    rollback_version: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "outcome": self.outcome, "canaries": self.canaries,
                "reasons": self.reasons, "rollback_version": self.rollback_version, "seconds": self.seconds,
                "health": [h.__dict__ for h in self.health]}


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
        self._cancel = threading.Event()  # cancel_current() halts the rollout in progress
        self._closing = threading.Event()  # close() stops watching without deciding anything
        self._status: dict = {"state": "idle"}
        self._status_lock = threading.Lock()

    def status(self) -> dict:
        """The rollout in progress or the last one: version, canaries, their health, the decision."""
        with self._status_lock:
            return dict(self._status)

    def cancel_current(self, name: str | None = None) -> bool:
        """Halt the rollout in progress (of ``name``, when given) and roll back; False when none runs."""
        status = self.status()
        if status.get("state") != "watching" or (name is not None and status.get("name") != name):
            return False
        self._cancel.set()
        return True

    @contextlib.contextmanager
    def _exclusive(self):
        """For manual actions: fail at once, rather than block a web request, while a rollout runs."""
        if not self._lock.acquire(blocking=False):
            status = self.status()
            raise PublishError(f"a staged rollout of {status.get('name')} v{status.get('version')} is in progress;"
                               " cancel it first (it rolls back) or wait for it to finish")
        try:
            yield
        finally:
            self._lock.release()

    def _set_status(self, **fields: object) -> None:
        with self._status_lock:
            self._status = {**self._status, **fields}

    def close(self) -> None:
        """Stop: a rollout being watched is left as it is (state canary), neither widened nor rolled back."""
        self._closing.set()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def roll_out_async(self, name: str, version: int, cancel: threading.Event | None = None
                       ) -> "Future[RolloutResult]":
        fut = self._executor.submit(self.roll_out, name, version, cancel)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception() is None or log.error(
            "rollout of %s v%d failed: %s", name, version, f.exception(), exc_info=f.exception()))
        return fut

    def roll_out(self, name: str, version: int, cancel: threading.Event | None = None) -> RolloutResult:
        """Canary, watch, then widen or halt (blocking; ``cancel`` halts and rolls back)."""
        with self._lock:
            self._cancel.clear()
            self._set_status(state="starting", name=name, version=version, canaries=[], health=[], reasons=[],
                             outcome=None)
            try:
                result = self._roll_out(name, version, cancel)
            except BaseException as e:
                self._set_status(state="error", reasons=[str(e)])
                raise
            self._set_status(state="done", outcome=result.outcome, reasons=result.reasons,
                             rollback_version=result.rollback_version)
            return result

    def _roll_out(self, name: str, version: int, cancel: threading.Event | None) -> RolloutResult:
        t0 = self.clock()
        wait = self.watch.started_at + self.policy.discovery_s - self.clock()
        if wait > 0:
            self.sleep(wait)
        previous = self.registry.current(name)
        cohort, canaries = choose_canaries(name, self.watch.agents(), self.policy)
        self.watch.track(version)
        announced_at = self.clock()
        if canaries:
            self.publisher.announce(name, version, cohort)  # raises before any state change on a bad model
        self.registry.set_state(name, version, "canary", f"canaries: {', '.join(canaries) or 'none known'}")
        log.info("rollout of %s v%d: canaries %s", name, version, canaries)
        while True:
            health = [canary_health(v, version, announced_at, self.policy) for v in self.watch.views(canaries)]
            decision = decide(health, announced_at, self.clock(), self.policy)
            self._set_status(state="watching", canaries=canaries, health=[h.__dict__ for h in health],
                             ok=decision.ok, failed=decision.failed, pending=decision.pending)
            if self._cancel.is_set() or (cancel is not None and cancel.is_set()):
                decision = replace(decision, action="halt", reasons=["cancelled by an operator"])
            if decision.action != "wait":
                break
            if self._closing.is_set():
                log.warning("rollout of %s v%d interrupted by shutdown: still on its canaries; publish it again"
                            " to resume watching, or roll back", name, version)
                self.registry.record_event(name, version, "rollout_interrupted", {"canaries": canaries})
                return RolloutResult(name, version, "interrupted", canaries, ["the server stopped"], health,
                                     seconds=self.clock() - t0)
            self.sleep(self.policy.tick_s)
        self.registry.record_event(name, version, f"rollout_{decision.action}",
                                   {"reasons": decision.reasons, "health": [h.__dict__ for h in health]})
        if decision.action == "widen":
            self.publisher.announce(name, version, Cohort(stage="fleet"))
            self.registry.set_state(name, version, "fleet", "; ".join(decision.reasons)[:1000])
            return RolloutResult(name, version, "fleet", canaries, decision.reasons, health,
                                 seconds=self.clock() - t0)
        cancelled = self._cancel.is_set() or (cancel is not None and cancel.is_set())
        reason = ("cancelled" if cancelled else "canaries failed") + ": " + "; ".join(decision.reasons)
        self.registry.set_state(name, version, "halted", reason[:1000])
        log.error("rollout of %s v%d halted: %s", name, version, reason)
        back = self._restore(name, previous) if canaries else None  # nothing went out: nothing to undo
        return RolloutResult(name, version, "halted", canaries, decision.reasons, health,
                             back.record.version if back else None, self.clock() - t0)

    def _restore(self, name: str, previous: ModelRecord | None) -> Published | None:
        if previous is None:
            # Nothing to go back to: stop agents that connect later from installing the halted model.
            self.publisher.withdraw(name)
            return None
        record = self.registry.register_rollback(name, previous.source_version or previous.version)
        return self.publisher.announce(name, record.version, Cohort(stage="fleet"))

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
        """A manual announcement to a chosen cohort, without canary watching."""
        with self._exclusive():
            published = self.publisher.announce(name, version, cohort)
            state = "fleet" if cohort.stage == "fleet" else "published"
            self.registry.set_state(name, version, state, f"published by hand to {cohort.stage}")
            return published
