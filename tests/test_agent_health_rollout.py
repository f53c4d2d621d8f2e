"""A staged rollout to real agents: a NaN model halts on its canary, a good one reaches the fleet.

The real publishing side (registry, signing key, model server over HTTP,
``RolloutController`` watching Status/Telemetry over MQTT) against four real
in-process agents (``agent.pipeline.Agent``) on synthetic cameras, each with its
own data directory, outbox, MQTT connection and health window.
"""

from __future__ import annotations

import contextlib

import pytest
from fastapi import FastAPI
from mqtt_util import wait_until

from agent.modelstore import ModelStore
from agent_helpers import Collector, base_config, make_classifier, make_faulty_classifier, running, write_config
from protocol.manifest import Cohort
from trainer.publish import keys
from trainer.publish.health import RolloutPolicy
from trainer.publish.publisher import register_file
from trainer.publish.registry import NewModel, Registry
from trainer.publish.routes import router
from trainer.publish.service import PublishingConfig, PublishingService
from trainer.publish.simfleet import ModelServer

AGENTS = [f"cam-{i}" for i in range(4)]
CANARY = "cam-0"
# Agents send per-model confidence histograms; over a 1.5 s window (a couple of dozen frames, a few scenes of
# the synthetic camera) two near-identical models' histograms still differ by sampling noise, so the
# histogram limit is loose here: this test is about the health window, not the histogram check.
POLICY = RolloutPolicy(canary_percent=0, canary_agents=(CANARY,), min_canaries=1, window_s=1.5,
                       install_timeout_s=30, discovery_s=1.0, tick_s=0.1, max_conf_shift=0.95)


@pytest.fixture
def fleet(tmp_path, broker):
    files = keys.generate(tmp_path / "keys")
    registry = Registry(tmp_path / "server")
    v1 = make_classifier(tmp_path / "v1.onnx", version=1)
    app = FastAPI()
    app.state.registry = registry
    app.include_router(router)
    collector = Collector(broker.host, broker.port)
    with ModelServer(app) as server, contextlib.ExitStack() as stack:
        agents = {}
        for i, agent_id in enumerate(AGENTS):
            home = tmp_path / agent_id
            cfg = base_config(home, broker, v1, agent_id=agent_id,
                              updates={"enabled": True, "trusted_keys": [files.public_b64], "allow_http": True,
                                       "health": {"window_s": 1.0, "min_frames": 10}})
            cfg["cameras"][0]["synthetic"].update(seed=i, fps=15)
            home.mkdir()
            agents[agent_id] = stack.enter_context(running(write_config(home / "agent.toml", cfg), seed=i))
        assert wait_until(lambda: all(_online(collector, a) for a in AGENTS), 20)
        cfg = PublishingConfig(model_name="shapes", signing_key=files.private, base_url=server.url,
                               mqtt_host=broker.host, mqtt_port=broker.port, rollout=POLICY)
        svc = PublishingService.open(cfg, registry=registry)
        stack.callback(svc.close)
        first = register_file(registry, v1, "shapes")  # the fleet model the agents were configured with
        svc.controller.publish("shapes", first.version, Cohort("fleet"))
        yield svc, registry, agents, collector, tmp_path
    collector.close()
    registry.close()


def _online(collector: Collector, agent_id: str):
    with collector.lock:
        mine = [s for s in collector.statuses if s.agent_id == agent_id]
    return mine[-1] if mine and mine[-1].state == "online" else None


def _seen(collector: Collector, agent_id: str) -> list[tuple[int, str]]:
    with collector.lock:
        return [(s.model_version, s.model_state) for s in collector.statuses if s.agent_id == agent_id]


def _register(registry: Registry, path) -> int:
    return registry.register(NewModel(name="shapes", file=path, task="classification",
                                      labels=("circle", "square", "triangle"))).version


def test_nan_model_halts_on_the_canary_and_a_good_one_widens(fleet):
    svc, registry, agents, collector, tmp_path = fleet
    bad = _register(registry, make_faulty_classifier(tmp_path / "nan.onnx", "nan", version=2))
    result = svc.controller.roll_out("shapes", bad)
    assert (result.outcome, result.canaries, result.rollback_version) == ("halted", [CANARY], 3), result.reasons
    assert any("reverted" in r and "failed its health window" in r for r in result.reasons), result.reasons
    # the canary went back to v1 by itself, then took the rollback (v1's file as v3) like everybody
    assert wait_until(lambda: all((s := _online(collector, a)) and (s.model_version, s.model_state) == (3, "ok")
                                  for a in AGENTS), 30), {a: _seen(collector, a)[-3:] for a in AGENTS}
    canary = _seen(collector, CANARY)
    assert canary.index((2, "updating")) < canary.index((1, "reverted")) < canary.index((3, "ok"))
    for agent_id in AGENTS[1:]:  # outside the canary cohort: v2 never ran, and was never even downloaded
        assert all(v != 2 for v, _ in _seen(collector, agent_id)), _seen(collector, agent_id)
        assert agents[agent_id].counters.get("nonfinite_output") == 0
        assert ModelStore(tmp_path / agent_id / "data" / "models").load().blocked == ()
    assert ModelStore(tmp_path / CANARY / "data" / "models").load().blocked == (2,)
    assert registry.get("shapes", bad).state == "halted"

    # a good model afterwards: the canary passes its window, the controller widens, every agent runs it
    good = _register(registry, make_classifier(tmp_path / "good.onnx", version=4, scale=4.2))
    result = svc.controller.roll_out("shapes", good)
    assert result.outcome == "fleet", result.reasons
    assert wait_until(lambda: all((s := _online(collector, a)) and (s.model_version, s.model_state) == (good, "ok")
                                  for a in AGENTS), 30), {a: _seen(collector, a)[-3:] for a in AGENTS}
    assert all("passed its health window" in _online(collector, a).detail for a in AGENTS)
    with collector.lock:  # the controller widened only after the canary's own window passed
        order = [(s.agent_id, s.model_version, s.model_state) for s in collector.statuses]
    fleet_start = min(i for i, (a, v, _) in enumerate(order) if a != CANARY and v == good)
    assert order.index((CANARY, good, "ok")) < fleet_start
