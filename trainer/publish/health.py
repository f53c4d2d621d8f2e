"""Pure rollout decisions: which agents are canaries, is each healthy, widen or halt?

Nothing here talks to MQTT or reads a clock: the controller
(``trainer.publish.rollout``) feeds in what it observed and the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol import Status, Telemetry
from protocol.manifest import Cohort, bucket
from protocol.topics import ID_RE

from .stages import RolloutStage, validate_stages


class RolloutPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    canary_percent: int = Field(10, ge=0, le=100)  # a stable share of the fleet (protocol.manifest.bucket)
    canary_agents: tuple[str, ...] = ()
    canary_groups: tuple[str, ...] = ()
    min_canaries: int = Field(1, ge=0, le=1000)  # topped up with the lowest-bucket known agents, by name
    window_s: float = Field(60.0, ge=0.0, le=7 * 86400)  # canaries healthy this long after the announcement: widen
    install_timeout_s: float = Field(300.0, gt=0.0, le=7 * 86400)  # a canary silent this long counts as failed
    max_failed_fraction: float = Field(0.2, ge=0.0, le=1.0)  # halt at max(1, ceil(fraction * canaries)) failures
    max_error_rate: float = Field(0.01, ge=0.0, le=1.0)  # inference errors per inferred frame on the new model
    max_fps_drop: float = Field(0.5, ge=0.0, le=1.0)  # vs the same agent's fps on the previous model
    max_conf_shift: float = Field(0.6, ge=0.0, le=1.0)  # total variation between confidence histograms
    no_canaries: Literal["widen", "halt"] = "widen"  # nobody known to protect: widen, or refuse
    discovery_s: float = Field(1.0, ge=0.0, le=600.0)  # listen for retained statuses before picking canaries
    tick_s: float = Field(0.2, gt=0.0, le=60.0)
    # The configured stages ([[publish.rollout.stages]]); empty: canary (the canary_* keys above) -> fleet.
    stages: tuple[RolloutStage, ...] = ()

    @field_validator("canary_agents", "canary_groups")
    @classmethod
    def _ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for x in v:
            if not ID_RE.match(x):
                raise ValueError(f"{x!r} is not an agent/group id")
        return v

    @model_validator(mode="after")
    def _stages(self) -> "RolloutPolicy":
        validate_stages(self.stages)
        return self

    def plan(self) -> tuple[RolloutStage, ...]:
        """The stages to run: the configured list, or the classic canary -> fleet built from canary_*."""
        if self.stages:
            return self.stages
        return (RolloutStage(name="canary", percent=self.canary_percent, agents=self.canary_agents,
                             groups=self.canary_groups, min_agents=self.min_canaries, hold_s=self.window_s),
                RolloutStage(name="fleet", everyone=True, hold_s=0.0))

    def for_stage(self, stage: RolloutStage) -> "RolloutPolicy":
        """This policy with the stage's hold as the window and its check overrides applied."""
        return self.model_copy(update={"window_s": stage.hold_s, **stage.checks.overrides()})


@dataclass
class AgentView:
    """What the controller has heard from one agent; times are the controller's clock at receipt."""

    agent_id: str
    status: Status | None = None
    status_at: float = 0.0
    before: Telemetry | None = None  # latest telemetry on another model version
    first_new: Telemetry | None = None  # first and latest telemetry on the version being rolled out
    last_new: Telemetry | None = None

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.status.cohorts) if self.status else ()


@dataclass(frozen=True)
class CanaryHealth:
    agent_id: str
    state: Literal["pending", "ok", "failed"]
    reason: str = ""


@dataclass(frozen=True)
class RolloutDecision:
    action: Literal["wait", "widen", "halt"]
    reasons: list[str] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    pending: int = 0


def choose_canaries(model_name: str, agents: dict[str, tuple[str, ...]], policy: RolloutPolicy
                    ) -> tuple[Cohort, list[str]]:
    """The canary cohort to announce and the known agents it covers (agent id -> its groups in, sorted ids out).

    Agents decide membership themselves with ``Cohort.includes``; when the
    percent picks fewer than ``min_canaries`` of the known agents, the
    lowest-bucket others are named explicitly so a small fleet still gets a canary.
    """
    base = Cohort(stage="canary", percent=policy.canary_percent, agents=tuple(sorted(policy.canary_agents)),
                  groups=tuple(sorted(policy.canary_groups)))
    chosen = {a for a, groups in agents.items() if base.includes(model_name, a, groups)}
    extra: list[str] = []
    if len(chosen) < policy.min_canaries:
        rest = sorted((a for a in agents if a not in chosen), key=lambda a: (bucket(model_name, a), a))
        extra = rest[:policy.min_canaries - len(chosen)]
    cohort = Cohort(stage="canary", percent=base.percent, agents=tuple(sorted(set(base.agents) | set(extra))),
                    groups=base.groups)
    return cohort, sorted(chosen | set(extra))


def conf_shift(a: dict[str, tuple[int, ...]], b: dict[str, tuple[int, ...]]) -> float | None:
    """Total variation distance between two confidence histograms summed over labels (None: too little data)."""
    pa, pb = _pooled(a), _pooled(b)
    if pa is None or pb is None:
        return None
    return 0.5 * sum(abs(x - y) for x, y in zip(pa, pb))


def _pooled(hist: dict[str, tuple[int, ...]]) -> list[float] | None:
    if not hist:
        return None
    bins = [sum(col) for col in zip(*hist.values())]
    total = sum(bins)
    return [b / total for b in bins] if total else None


def canary_health(view: AgentView, version: int, announced_at: float, policy: RolloutPolicy) -> CanaryHealth:
    s = view.status
    fresh = s is not None and view.status_at >= announced_at
    if s is None or (not fresh and s.model_version != version):
        return CanaryHealth(view.agent_id, "pending", "no report since the announcement")
    if fresh and s.state == "offline":
        return CanaryHealth(view.agent_id, "failed", "went offline during the canary window")
    if fresh and s.model_state in ("failed", "reverted"):
        return CanaryHealth(view.agent_id, "failed", f"model {s.model_state} on v{s.model_version}: {s.detail}"[:300])
    if s.model_version != version or s.model_state != "ok":
        return CanaryHealth(view.agent_id, "pending", f"runs v{s.model_version} ({s.model_state})")
    problem = _telemetry_problem(view, policy)
    if problem:
        return CanaryHealth(view.agent_id, "failed", problem)
    return CanaryHealth(view.agent_id, "ok")


def _telemetry_problem(view: AgentView, policy: RolloutPolicy) -> str:
    first, last, before = view.first_new, view.last_new, view.before
    if last is None:
        return ""
    if first is not None and last is not first:
        frames = last.frames - first.frames
        errors = last.inference_errors - first.inference_errors
        if errors > 0 and errors / max(frames, 1) > policy.max_error_rate:
            return f"{errors} inference errors in {max(frames, 0)} frames on the new model"
    if before is not None and before.fps > 0 and last.fps < before.fps * (1 - policy.max_fps_drop):
        return f"fps fell from {before.fps:.1f} to {last.fps:.1f}"
    if before is not None:
        shift = conf_shift(before.conf_hist, last.conf_hist)
        if shift is not None and shift > policy.max_conf_shift:
            return f"confidence histogram moved by {shift:.2f} (limit {policy.max_conf_shift:.2f})"
    return ""


def decide(health: list[CanaryHealth], announced_at: float, now: float, policy: RolloutPolicy) -> RolloutDecision:
    """Widen once every canary is healthy after the window; halt when failures reach the threshold."""
    elapsed = now - announced_at
    if not health:
        if policy.no_canaries == "widen":
            return RolloutDecision("widen", ["no canary agents known: widened without a canary stage"])
        return RolloutDecision("halt", ["no canary agents known and policy.no_canaries is halt"])
    failed = [h for h in health if h.state == "failed"]
    pending = [h for h in health if h.state == "pending"]
    ok = len(health) - len(failed) - len(pending)
    if elapsed >= policy.install_timeout_s:
        failed = failed + [CanaryHealth(h.agent_id, "failed", f"no healthy report in {policy.install_timeout_s:.0f}s"
                                        f" ({h.reason})") for h in pending]
        pending = []
    threshold = max(1, math.ceil(policy.max_failed_fraction * len(health)))
    counts = {"ok": ok, "failed": len(failed), "pending": len(pending)}
    if len(failed) >= threshold:
        return RolloutDecision("halt", [f"{h.agent_id}: {h.reason}" for h in failed], **counts)
    if not pending and elapsed >= policy.window_s:
        reasons = [f"{ok} of {len(health)} canaries healthy for {policy.window_s:.0f}s"]
        reasons += [f"tolerated {h.agent_id}: {h.reason}" for h in failed]
        return RolloutDecision("widen", reasons, **counts)
    return RolloutDecision("wait", [], **counts)
