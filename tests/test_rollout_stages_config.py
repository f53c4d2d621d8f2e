"""Rollout stages as configuration: validation with clear errors at start, cumulative cohorts (pure)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from protocol.manifest import bucket
from trainer.publish.health import RolloutPolicy
from trainer.publish.stages import RolloutStage, stage_cohort
from trainer.server.config import ConfigError, load_config

SERVER = """
[publish]
signing_key = "key.pem"
base_url = "http://127.0.0.1:8000"
"""


def server_toml(tmp_path, stages: str):
    path = tmp_path / "server.toml"
    path.write_text(SERVER + stages)
    return path


def test_a_good_stage_list_loads_from_the_server_config(tmp_path):
    cfg = load_config(server_toml(tmp_path, """
[[publish.rollout.stages]]
name = "canary"
agents = ["dock-cam-1"]
hold_s = 600
[[publish.rollout.stages]]
name = "ten"
percent = 10
hold_s = 1800
checks = { max_error_rate = 0.001 }
[[publish.rollout.stages]]
name = "half"
percent = 50
[[publish.rollout.stages]]
name = "everyone"
everyone = true
hold_s = 0
"""))
    plan = cfg.publish.rollout.plan()
    assert [s.name for s in plan] == ["canary", "ten", "half", "everyone"]
    ten = cfg.publish.rollout.for_stage(plan[1])
    assert (ten.window_s, ten.max_error_rate, ten.max_fps_drop) == (1800, 0.001, RolloutPolicy().max_fps_drop)


@pytest.mark.parametrize("stages, message", [
    ('[[publish.rollout.stages]]\nname = "a"\npercent = 10\n', "must reach everyone"),
    ('[[publish.rollout.stages]]\nname = "a"\npercent = 50\n[[publish.rollout.stages]]\nname = "b"\npercent = 10\n'
     '[[publish.rollout.stages]]\nname = "c"\neveryone = true\n', "stage 2 ('b'): percent 10 is below"),
    ('[[publish.rollout.stages]]\nname = "a"\npercent = 10\n[[publish.rollout.stages]]\nname = "a"\n'
     'everyone = true\n', "names must be unique"),
    ('[[publish.rollout.stages]]\nname = "all"\neveryone = true\n[[publish.rollout.stages]]\nname = "b"\n'
     'percent = 100\n', "already reaches everyone"),
    ('[[publish.rollout.stages]]\nname = "a"\n[[publish.rollout.stages]]\nname = "b"\neveryone = true\n',
     "adds nobody"),
    ('[[publish.rollout.stages]]\nname = "a"\npercent = 10\nhold = 5\n', "hold"),  # a typo of hold_s
    ('[[publish.rollout.stages]]\nname = "a"\nagents = ["no spaces"]\n', "not an agent/group id"),
    ('[[publish.rollout.stages]]\nname = "a"\npercent = 101\n', "percent"),
    ('[[publish.rollout.stages]]\nname = "a"\npercent = 5\nchecks = { max_error_rate = 2 }\n', "max_error_rate"),
])
def test_a_bad_stage_list_is_refused_at_start_with_the_reason(tmp_path, stages, message):
    with pytest.raises(ConfigError, match="publish.rollout") as err:
        load_config(server_toml(tmp_path, stages))
    assert message in str(err.value)


def test_no_stages_is_the_classic_canary_then_fleet():
    plan = RolloutPolicy(canary_percent=20, canary_agents=("x",), min_canaries=2, window_s=45).plan()
    assert [(s.name, s.percent, s.agents, s.min_agents, s.hold_s, s.reaches_everyone) for s in plan] == [
        ("canary", 20, ("x",), 2, 45, False), ("fleet", 0, (), 0, 0.0, True)]


def test_too_many_stages_are_refused():
    stages = [RolloutStage(name=f"s{i}", percent=i) for i in range(1, 21)]
    with pytest.raises(ValidationError, match="at most 20"):
        RolloutPolicy(stages=(*stages, RolloutStage(name="all", everyone=True)))


# -- cohorts ------------------------------------------------------------------------------------------

KNOWN = {f"a{i}": () for i in range(60)} | {"lab-1": ("lab",), "lab-2": ("lab",)}
PLAN = (RolloutStage(name="lab", groups=("lab",)), RolloutStage(name="ten", percent=10, min_agents=5),
        RolloutStage(name="half", percent=50), RolloutStage(name="all", everyone=True))


def test_stage_cohorts_are_cumulative_and_every_agent_decides_alike():
    carried: tuple[str, ...] = ()
    before: set[str] = set()
    for k in range(3):
        cohort, members = stage_cohort("m", KNOWN, PLAN, k, carried)
        carried = cohort.agents
        assert before <= set(members), f"stage {k + 1} dropped agents of an earlier stage"
        # agents decide membership themselves from the announced cohort: the same set
        assert {a for a, g in KNOWN.items() if cohort.includes("m", a, g)} == set(members)
        before = set(members)
    assert set(stage_cohort("m", KNOWN, PLAN, 2, carried)[1]) >= {a for a in KNOWN if bucket("m", a) < 50}
    cohort, members = stage_cohort("m", KNOWN, PLAN, 3, carried)
    assert cohort.stage == "fleet" and members == sorted(KNOWN)


def test_min_agents_tops_up_with_the_lowest_buckets_and_carries_them_on():
    cohort, members = stage_cohort("m", KNOWN, PLAN, 1)
    pct = {a for a in KNOWN if bucket("m", a) < 10} | {"lab-1", "lab-2"}
    assert len(members) == max(5, len(pct)) and pct <= set(members)
    extra = set(members) - pct
    assert set(cohort.agents) == extra
    # a later stage keeps the topped-up agents even if its percent would not pick them
    later, members2 = stage_cohort("m", KNOWN, PLAN, 2, cohort.agents)
    assert extra <= set(members2) and extra <= set(later.agents)


def test_a_stage_cannot_ask_for_more_agents_than_a_manifest_cohort_holds():
    from trainer.publish.stages import MAX_COHORT_AGENTS, validate_stages

    assert MAX_COHORT_AGENTS == 10000
    RolloutStage(name="big", min_agents=MAX_COHORT_AGENTS)
    with pytest.raises(ValidationError):
        RolloutStage(name="huge", min_agents=MAX_COHORT_AGENTS + 1)
    half = tuple(f"cam-{i}" for i in range(6000))
    other = tuple(f"dock-{i}" for i in range(6000))
    with pytest.raises(ValueError, match="10000"):
        validate_stages((RolloutStage(name="a", agents=half), RolloutStage(name="b", agents=other),
                         RolloutStage(name="all", everyone=True)))
    # agents carried from earlier top-ups (some now offline) never push a cohort past the limit
    known = {f"new-{i}": () for i in range(9000)}
    carried = tuple(f"gone-{i}" for i in range(5000))
    cohort, _ = stage_cohort("m", known, (RolloutStage(name="s", min_agents=9000),
                                          RolloutStage(name="all", everyone=True)), 0, carried)
    assert len(cohort.agents) <= MAX_COHORT_AGENTS
