"""Staged rollout end to end: real broker, real HTTP downloads, real signatures, 10 simulated agents."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from mqtt_util import wait_until

from protocol.manifest import Cohort, load_public_key
from trainer.publish import keys
from trainer.publish.health import RolloutPolicy
from trainer.publish.publisher import PublishError
from trainer.publish.registry import NewModel, Registry
from trainer.publish.routes import router
from trainer.publish.service import PublishingConfig, PublishingService
from trainer.publish.simfleet import ModelServer, SimAgent, tiny_classifier

AGENTS = 10
POLICY = RolloutPolicy(canary_percent=30, min_canaries=2, window_s=1.0, install_timeout_s=20, discovery_s=0.5,
                       tick_s=0.05, max_failed_fraction=0.2)


@pytest.fixture
def agent_options() -> dict:
    return {}


@pytest.fixture
def fleet_size() -> int:
    return AGENTS


@pytest.fixture
def fleet(tmp_path, broker, agent_options, fleet_size):
    files = keys.generate(tmp_path / "keys")
    registry = Registry(tmp_path / "data")
    app = FastAPI()
    app.state.registry = registry
    app.include_router(router)
    with ModelServer(app) as server:
        cfg = PublishingConfig(model_name="m", signing_key=files.private, base_url=server.url,
                               mqtt_host=broker.host, mqtt_port=broker.port, rollout=POLICY)
        svc = PublishingService.open(cfg, registry=registry)
        trusted = [load_public_key(files.public_b64)]
        agents = [SimAgent(f"agent-{i}", broker.host, broker.port, "m", trusted, **agent_options).start()
                  for i in range(fleet_size)]
        assert all(a.wait_ready() for a in agents)
        v1 = register(registry, tmp_path, 1)
        svc.controller.publish("m", v1.version, Cohort("fleet"))  # what the agents already run
        yield svc, registry, agents, tmp_path
        for a in agents:
            a.stop()
        svc.close()
    registry.close()


def register(registry: Registry, tmp_path, seed: int, nan: bool = False):
    f = tiny_classifier(tmp_path / f"round-{seed}.onnx", "m", ("cat", "dog"), seed=seed, nan=nan)
    return registry.register(NewModel(name="m", file=f, task="classification", labels=("cat", "dog"),
                                      metrics={"accuracy": 0.5 + seed / 10}))


def test_canaries_first_then_the_whole_fleet(fleet):
    svc, registry, agents, tmp_path = fleet
    v2 = register(registry, tmp_path, 2)
    result = svc.controller.roll_out("m", v2.version)
    assert result.outcome == "fleet", result.reasons
    canaries = set(result.canaries)
    assert 2 <= len(canaries) < AGENTS
    assert wait_until(lambda: all(a.version == 2 for a in agents), timeout=15)
    first_fleet = min(a.reported_at[2] for a in agents if a.agent_id not in canaries)
    # Every canary ran v2 before any other agent got it, and the fleet waited for the window.
    assert max(a.reported_at[2] for a in agents if a.agent_id in canaries) < first_fleet
    assert all(a.refused == [] for a in agents)
    assert registry.get("m", 2).state == "fleet" and registry.current("m").version == 2
    stages = [p["stage"] for p in registry.publications("m", 2)]
    assert stages == ["canary", "fleet"]


@pytest.mark.parametrize("fleet_size", [50])
def test_staged_rollout_to_50_agents_completes(fleet, fleet_size):
    svc, registry, agents, tmp_path = fleet
    v2 = register(registry, tmp_path, 2)
    result = svc.controller.roll_out("m", v2.version)
    assert result.outcome == "fleet", result.reasons
    assert len(result.canaries) >= 2
    # Every one of the 50 downloaded, verified, loaded and reported the new version.
    assert wait_until(lambda: all(a.version == 2 for a in agents), timeout=60), \
        sorted(a.agent_id for a in agents if a.version != 2)
    assert all(a.refused == [] for a in agents)
    assert len(agents) == 50


def test_failing_canaries_halt_and_roll_back_while_others_never_install(fleet):
    svc, registry, agents, tmp_path = fleet
    bad = register(registry, tmp_path, 2, nan=True)
    result = svc.controller.roll_out("m", bad.version)
    assert result.outcome == "halted"
    assert result.rollback_version == 3
    assert any("reverted" in r for r in result.reasons)
    canaries = set(result.canaries)
    assert wait_until(lambda: all(a.version == 3 for a in agents), timeout=15)
    for a in agents:
        assert (2 in a.installed) == (a.agent_id in canaries), (a.agent_id, a.installed)
        assert a.installed[-1] == 3
    rb = registry.get("m", 3)
    assert (rb.note, rb.source_version, rb.state) == ("rollback to 1", 1, "fleet")
    assert registry.get("m", 2).state == "halted" and "canaries failed" in registry.get("m", 2).reason
    assert registry.current("m").version == 3
    # A re-announcement of an older version is a downgrade: nobody takes it.
    svc.controller.publish("m", 1, Cohort("fleet"))
    assert not wait_until(lambda: any(a.version != 3 for a in agents), timeout=0.5)


def test_an_operator_can_cancel_a_rollout_during_the_window(fleet):
    svc, registry, agents, tmp_path = fleet
    v2 = register(registry, tmp_path, 2)
    svc.controller.policy = POLICY.model_copy(update={"window_s": 60.0})
    assert not svc.controller.cancel_current()
    fut = svc.controller.roll_out_async("m", v2.version)
    assert wait_until(lambda: svc.controller.status().get("state") == "watching" and
                      svc.controller.status().get("ok", 0) >= 2, timeout=15), svc.controller.status()
    assert not svc.controller.cancel_current("other-model")
    with pytest.raises(PublishError, match="in progress"):  # manual actions fail fast, never block
        svc.controller.rollback("m")
    assert svc.controller.cancel_current("m")
    result = fut.result(15)
    assert (result.outcome, result.reasons, result.rollback_version) == ("halted", ["cancelled by an operator"], 3)
    assert registry.get("m", 2).reason.startswith("cancelled")
    assert svc.controller.status()["state"] == "done"
    assert wait_until(lambda: all(a.version == 3 for a in agents), timeout=15)


@pytest.mark.parametrize("agent_options", [{"telemetry_s": 0.1, "erroring_versions": (2,)}])
def test_inference_errors_in_canary_telemetry_halt_the_rollout(fleet):
    svc, registry, agents, tmp_path = fleet
    v2 = register(registry, tmp_path, 2)  # loads and runs once fine; errors only show in telemetry
    result = svc.controller.roll_out("m", v2.version)
    assert result.outcome == "halted" and result.rollback_version == 3
    assert any("inference errors" in r for r in result.reasons), result.reasons
    canaries = set(result.canaries)
    assert wait_until(lambda: all(a.version == 3 for a in agents), timeout=15)
    assert all((2 in a.installed) == (a.agent_id in canaries) for a in agents)


def test_manual_rollback_goes_up_in_version(fleet):
    svc, registry, agents, tmp_path = fleet
    v2 = register(registry, tmp_path, 2)
    svc.controller.publish("m", v2.version, Cohort("fleet"))
    assert wait_until(lambda: all(a.version == 2 for a in agents), timeout=15)
    p = svc.controller.rollback("m")
    assert (p.record.version, p.record.note, p.manifest.version) == (3, "rollback to 1", 3)
    assert wait_until(lambda: all(a.version == 3 for a in agents), timeout=15)
    assert registry.get("m", 2).state == "rolled_back"


def test_shutdown_while_watching_leaves_the_canary_stage_as_it_is(fleet):
    svc, registry, agents, tmp_path = fleet
    v2 = register(registry, tmp_path, 2)
    svc.controller.policy = POLICY.model_copy(update={"window_s": 60.0})
    fut = svc.controller.roll_out_async("m", v2.version)
    assert wait_until(lambda: svc.controller.status().get("state") == "watching", timeout=15)
    svc.controller.close()
    result = fut.result(5)
    assert result.outcome == "interrupted" and result.rollback_version is None
    assert registry.get("m", 2).state == "canary"
    assert [p["stage"] for p in registry.publications("m", 2)] == ["canary"]
