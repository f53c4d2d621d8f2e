"""Configured rollout stages: the list, its validation, and which agents each stage covers (pure).

A rollout is a list of ``RolloutStage`` (for example one canary -> 10 % -> 50 % ->
everyone, or a pilot group first). Each stage names who it adds (a stable
percent of the fleet through ``protocol.manifest.bucket``, named agents,
groups, topped up to ``min_agents``), how long its agents must stay healthy
(``hold_s``) and, optionally, stricter or looser health checks than the
policy's. Stages are cumulative: stage k's cohort holds every agent of
stages 0..k, so an agent that installed at 10 % is still in the cohort at 50 %.
The last stage must reach everyone (``everyone = true`` or ``percent = 100``).

Nothing here reads a clock or talks to MQTT; ``trainer.publish.rollout`` drives it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol.manifest import Cohort, bucket
from protocol.topics import ID_RE

MAX_STAGES = 20
MAX_COHORT_AGENTS = 10000  # protocol.manifest accepts at most this many named agents in a cohort


class StageChecks(BaseModel):
    """Per-stage overrides of the policy's health checks; an unset one inherits the policy's value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_failed_fraction: float | None = Field(None, ge=0.0, le=1.0)
    max_error_rate: float | None = Field(None, ge=0.0, le=1.0)
    max_fps_drop: float | None = Field(None, ge=0.0, le=1.0)
    max_conf_shift: float | None = Field(None, ge=0.0, le=1.0)
    install_timeout_s: float | None = Field(None, gt=0.0, le=7 * 86400)

    def overrides(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class RolloutStage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
    percent: int = Field(0, ge=0, le=100)  # a stable share of the fleet; 100 = everyone
    agents: tuple[str, ...] = Field((), max_length=MAX_COHORT_AGENTS)
    groups: tuple[str, ...] = Field((), max_length=256)
    everyone: bool = False  # announce to the whole fleet (Cohort stage "fleet")
    min_agents: int = Field(0, ge=0, le=MAX_COHORT_AGENTS)  # the cumulative cohort is topped up to this many known agents
    hold_s: float = Field(60.0, ge=0.0, le=7 * 86400)  # healthy this long before the next stage
    checks: StageChecks = StageChecks()

    @field_validator("agents", "groups")
    @classmethod
    def _ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for x in v:
            if not ID_RE.match(x):
                raise ValueError(f"{x!r} is not an agent/group id")
        return v

    @property
    def reaches_everyone(self) -> bool:
        return self.everyone or self.percent >= 100


def validate_stages(stages: tuple[RolloutStage, ...]) -> tuple[RolloutStage, ...]:
    """Raise ValueError (with the stage's position and name) unless the list is a sane widening plan."""
    if not stages:
        return stages
    if len(stages) > MAX_STAGES:
        raise ValueError(f"at most {MAX_STAGES} rollout stages, got {len(stages)}")
    seen: set[str] = set()
    for i, s in enumerate(stages, 1):
        where = f"rollout stage {i} ({s.name!r})"
        if s.name in seen:
            raise ValueError(f"{where}: stage names must be unique")
        seen.add(s.name)
        if i < len(stages) and s.reaches_everyone:
            raise ValueError(f"{where} already reaches everyone, but stages follow it; make it the last stage")
        if i > 1 and not s.reaches_everyone and s.percent < stages[i - 2].percent:
            raise ValueError(f"{where}: percent {s.percent} is below the previous stage's"
                             f" {stages[i - 2].percent}; stages only widen")
        if not s.reaches_everyone and not (s.percent or s.agents or s.groups or s.min_agents):
            raise ValueError(f"{where} adds nobody: give percent, agents, groups or min_agents")
    named = set().union(*(s.agents for s in stages))
    if len(named) > MAX_COHORT_AGENTS:
        raise ValueError(f"the rollout stages name {len(named)} agents; a cohort holds at most {MAX_COHORT_AGENTS}")
    if not stages[-1].reaches_everyone:
        raise ValueError(f"the last rollout stage ({stages[-1].name!r}) must reach everyone:"
                         " set everyone = true or percent = 100")
    return stages


def stage_cohort(model_name: str, known: dict[str, tuple[str, ...]], stages: tuple[RolloutStage, ...], k: int,
                 carried: tuple[str, ...] = ()) -> tuple[Cohort, list[str]]:
    """The cohort to announce at stage ``k`` (0-based) and the known agents it covers, sorted.

    ``known`` maps online agent ids to their groups; ``carried`` are agents
    named explicitly by earlier stages' top-ups, kept so nobody leaves the cohort.
    The last stage, or one at 100 %, is the whole fleet.
    """
    stage = stages[k]
    if stage.reaches_everyone:
        return Cohort(stage="fleet"), sorted(known)
    upto = stages[:k + 1]
    named = set(carried).union(*(s.agents for s in upto))
    groups = sorted(set().union(*(s.groups for s in upto)))
    base = Cohort(stage="canary", percent=stage.percent, agents=tuple(sorted(named)), groups=tuple(groups))
    chosen = {a for a, g in known.items() if base.includes(model_name, a, g)}
    minimum = max(s.min_agents for s in upto)
    if len(chosen) < minimum:
        rest = sorted((a for a in known if a not in chosen), key=lambda a: (bucket(model_name, a), a))
        # never past what a manifest's cohort holds (agents carried from earlier stages count too)
        extra = rest[:max(0, min(minimum - len(chosen), MAX_COHORT_AGENTS - len(named)))]
        named |= set(extra)
        chosen |= set(extra)
    cohort = Cohort(stage="canary", percent=stage.percent, agents=tuple(sorted(named)), groups=tuple(groups))
    return cohort, sorted(chosen)


def describe(stage: RolloutStage) -> str:
    """A short human description of who a stage adds, for the Models page and the API."""
    if stage.reaches_everyone:
        return "everyone"
    parts = [f"{stage.percent} %"] if stage.percent else []
    parts += [f"agents {', '.join(stage.agents)}"] if stage.agents else []
    parts += [f"groups {', '.join(stage.groups)}"] if stage.groups else []
    parts += [f"at least {stage.min_agents}"] if stage.min_agents else []
    return " + ".join(parts)
