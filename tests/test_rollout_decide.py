"""Pure rollout decisions: canary choice, per-canary health, widen / wait / halt."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from protocol import HIST_BINS, Status, Telemetry, encode
from protocol.manifest import bucket
from protocol.topics import status_topic, telemetry_topic
from trainer.publish.health import (AgentView, CanaryHealth, RolloutPolicy, canary_health, choose_canaries,
                                    conf_shift, decide)
from trainer.publish.rollout import FleetWatch

T0 = 1000.0
POLICY = RolloutPolicy(window_s=30, install_timeout_s=120, max_failed_fraction=0.2)


def status(agent: str, version: int, model_state: str = "ok", state: str = "online", detail: str = "") -> Status:
    return Status(agent_id=agent, state=state, at=T0, model_name="m", model_version=version,
                  model_state=model_state, detail=detail)


def telemetry(version: int, frames: int, errors: int = 0, fps: float = 10.0, hist=None) -> Telemetry:
    hist = hist or {"a": tuple([0] * (HIST_BINS - 1) + [frames])}
    return Telemetry(agent_id="a1", at=T0, period_s=5, model_version=version, fps=fps, latency_p50_ms=1,
                     latency_p99_ms=2, frames=frames, sampled=0, inference_errors=errors, outbox_depth=0,
                     outbox_bytes=0, drops={}, conf_hist=hist)


def view(version: int, model_state: str = "ok", at: float = T0 + 1, **kw) -> AgentView:
    return AgentView("a1", status=status("a1", version, model_state, **{k: v for k, v in kw.items()
                                                                       if k in ("state", "detail")}),
                     status_at=at, **{k: v for k, v in kw.items() if k in ("before", "first_new", "last_new")})


# -- canary choice ----------------------------------------------------------------------------------

def test_percent_named_agents_and_groups_pick_canaries():
    agents = {f"a{i}": () for i in range(40)} | {"lab-1": ("lab",)}
    cohort, canaries = choose_canaries("m", agents, RolloutPolicy(canary_percent=25, canary_agents=("a3",),
                                                                    canary_groups=("lab",)))
    expected = {a for a in agents if bucket("m", a) < 25} | {"a3", "lab-1"}
    assert set(canaries) == expected
    assert all(cohort.includes("m", a, g) == (a in expected) for a, g in agents.items())


def test_small_fleet_gets_min_canaries_named_explicitly():
    agents = {"x": (), "y": (), "z": ()}
    cohort, canaries = choose_canaries("m", agents, RolloutPolicy(canary_percent=0, min_canaries=1))
    assert len(canaries) == 1 and cohort.agents == tuple(canaries)
    assert canaries[0] == min(agents, key=lambda a: bucket("m", a))
    assert [a for a in agents if cohort.includes("m", a)] == canaries


def test_no_agents_no_canaries():
    cohort, canaries = choose_canaries("m", {}, RolloutPolicy())
    assert canaries == [] and cohort.stage == "canary"


# -- per-canary health ---------------------------------------------------------------------------------

def test_health_from_status():
    assert canary_health(AgentView("a1"), 2, T0, POLICY).state == "pending"
    assert canary_health(view(1, at=T0 + 1), 2, T0, POLICY).state == "pending"
    assert canary_health(view(2), 2, T0, POLICY).state == "ok"
    assert canary_health(view(2, "updating"), 2, T0, POLICY).state == "pending"
    failed = canary_health(view(1, "failed", detail="sha256_mismatch"), 2, T0, POLICY)
    assert failed.state == "failed" and "sha256_mismatch" in failed.reason
    assert canary_health(view(1, "reverted"), 2, T0, POLICY).state == "failed"
    assert canary_health(view(2, state="offline"), 2, T0, POLICY).state == "failed"


def test_stale_failure_before_the_announcement_is_not_counted():
    assert canary_health(view(1, "failed", at=T0 - 5), 2, T0, POLICY).state == "pending"


def test_inference_errors_fail_a_canary():
    v = view(2, first_new=telemetry(2, 100), last_new=telemetry(2, 200, errors=5))
    h = canary_health(v, 2, T0, POLICY)
    assert h.state == "failed" and "5 inference errors in 100 frames" in h.reason
    fine = view(2, first_new=telemetry(2, 100), last_new=telemetry(2, 1100, errors=5))  # 0.5% < 1%
    assert canary_health(fine, 2, T0, POLICY).state == "ok"


def test_fps_drop_and_confidence_shift_vs_previous_model():
    slow = view(2, before=telemetry(1, 50, fps=20), last_new=telemetry(2, 50, fps=5))
    assert "fps fell from 20.0 to 5.0" in canary_health(slow, 2, T0, POLICY).reason
    sure = {"a": tuple([0] * (HIST_BINS - 1) + [100])}
    unsure = {"a": tuple([100] + [0] * (HIST_BINS - 1))}
    shifted = view(2, before=telemetry(1, 100, hist=sure), last_new=telemetry(2, 100, hist=unsure))
    assert "confidence histogram moved by 1.00" in canary_health(shifted, 2, T0, POLICY).reason
    same = view(2, before=telemetry(1, 100, hist=sure), last_new=telemetry(2, 30, hist=sure))
    assert canary_health(same, 2, T0, POLICY).state == "ok"


def test_conf_shift_is_total_variation():
    assert conf_shift({}, {"a": (1,) * HIST_BINS}) is None
    h = {"a": (1,) * HIST_BINS}
    assert conf_shift(h, h) == 0.0
    assert conf_shift({"a": (1, 0)}, {"b": (0, 1)}) == 1.0


# -- decisions --------------------------------------------------------------------------------------------

def hs(*states: str) -> list[CanaryHealth]:
    return [CanaryHealth(f"c{i}", s, "bad model" if s == "failed" else "") for i, s in enumerate(states)]


def test_wait_until_the_window_then_widen():
    assert decide(hs("ok", "ok"), T0, T0 + 10, POLICY).action == "wait"
    d = decide(hs("ok", "ok"), T0, T0 + 30, POLICY)
    assert d.action == "widen" and d.ok == 2


def test_pending_canaries_hold_the_widening():
    assert decide(hs("ok", "pending"), T0, T0 + 60, POLICY).action == "wait"


def test_failure_threshold_halts_at_once():
    d = decide(hs("ok", "failed", "pending"), T0, T0 + 1, POLICY)
    assert d.action == "halt" and d.reasons == ["c1: bad model"]
    # 10 canaries at 20%: one failure is tolerated, two halt.
    assert decide(hs(*["ok"] * 9, "failed"), T0, T0 + 1, POLICY).action == "wait"
    tolerated = decide(hs(*["ok"] * 9, "failed"), T0, T0 + 31, POLICY)
    assert tolerated.action == "widen" and "tolerated c9: bad model" in tolerated.reasons
    assert decide(hs(*["ok"] * 8, "failed", "failed"), T0, T0 + 1, POLICY).action == "halt"


def test_silent_canaries_count_as_failed_after_the_install_timeout():
    assert decide(hs("pending"), T0, T0 + 119, POLICY).action == "wait"
    d = decide(hs("pending"), T0, T0 + 120, POLICY)
    assert d.action == "halt" and "no healthy report in 120s" in d.reasons[0]


def test_no_canaries_follows_the_policy():
    assert decide([], T0, T0, POLICY).action == "widen"
    assert decide([], T0, T0, RolloutPolicy(no_canaries="halt")).action == "halt"


def test_policy_is_strict():
    with pytest.raises(ValidationError, match="windw_s"):
        RolloutPolicy(windw_s=3)
    with pytest.raises(ValidationError):
        RolloutPolicy(canary_agents=("bad/id",))


# -- the watch that feeds the decisions ------------------------------------------------------------------

def test_fleet_watch_tracks_status_and_attributes_telemetry():
    now = [T0]
    watch = FleetWatch(clock=lambda: now[0])
    watch.on_message(status_topic("a1"), encode(status("a1", 1)), True)
    watch.on_message(status_topic("gone"), encode(status("gone", 1, state="offline")), True)
    watch.on_message(telemetry_topic("a1"), encode(telemetry(1, 100)), False)
    assert watch.agents() == {"a1": ()}  # a retained offline will is never picked as a canary
    watch.track(2)
    for frames in (10, 20):
        watch.on_message(telemetry_topic("a1"), encode(telemetry(2, frames)), False)
    now[0] += 5
    watch.on_message(status_topic("a1"), encode(status("a1", 2)), False)
    [v] = watch.views(["a1"])
    assert (v.before.model_version, v.first_new.frames, v.last_new.frames, v.status_at) == (1, 10, 20, T0 + 5)
    assert watch.views(["nobody"])[0].status is None


def test_fleet_watch_counts_bad_messages_and_ignores_cleared_retained():
    watch = FleetWatch()
    watch.on_message(status_topic("a1"), b"garbage", True)
    watch.on_message(status_topic("a1"), b"", True)
    assert sum(watch.errors.values()) == 1 and watch.agents() == {}
