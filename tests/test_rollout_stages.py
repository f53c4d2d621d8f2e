"""Configured staged rollouts with real agents: 3 stages to everyone, a failing stage, pause/resume/abort, restart.

The real publishing side (registry, signing key, model server and the
``/api/models`` routes over HTTP, ``RolloutController`` over MQTT) against
five real in-process agents (``agent.pipeline.Agent``), each with its own data
folder, outbox, MQTT connection and health window. ``cam-0`` watches a
folder of black frames, the others synthetic cameras: the NaN model of
``make_faulty_classifier`` is finite on black frames only, so it passes the
canary stage and fails at the next one, where real scenes reach it.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from fastapi import FastAPI
from mqtt_util import wait_until

from agent_helpers import Collector, base_config, make_classifier, make_faulty_classifier, running, write_config
from protocol.manifest import Cohort
from trainer.publish import keys
from trainer.publish.health import RolloutPolicy
from trainer.publish.publisher import register_file
from trainer.publish.registry import NewModel, Registry
from trainer.publish.routes import api_router, router
from trainer.publish.service import PublishingConfig, PublishingService
from trainer.publish.simfleet import ModelServer
from trainer.publish.stages import RolloutStage

AGENTS = [f"cam-{i}" for i in range(5)]
CANARY = "cam-0"  # named in stage 1; its camera shows black frames
HOLD = 1.5


def policy(*stages: RolloutStage) -> RolloutPolicy:
    # The histogram check is loose: two tiny models' histograms over a few seconds differ by noise.
    return RolloutPolicy(stages=stages, install_timeout_s=30, discovery_s=1.0, tick_s=0.1, max_conf_shift=0.95,
                         max_failed_fraction=0.0)


THREE = policy(RolloutStage(name="canary", agents=(CANARY,), hold_s=HOLD),
               RolloutStage(name="half", percent=50, min_agents=3, hold_s=HOLD),
               RolloutStage(name="everyone", everyone=True, hold_s=1.0))


@pytest.fixture
def rollout_policy() -> RolloutPolicy:
    return THREE


@pytest.fixture
def fleet(tmp_path, broker, rollout_policy):
    files = keys.generate(tmp_path / "keys")
    registry = Registry(tmp_path / "server")
    v1 = make_classifier(tmp_path / "v1.onnx", version=1)
    black = tmp_path / "black"
    black.mkdir()
    for i in range(3):
        cv2.imwrite(str(black / f"{i}.png"), np.zeros((72, 96, 3), np.uint8))
    app = FastAPI()
    app.state.registry = registry
    app.include_router(router)
    app.include_router(api_router(lambda: "ops"))
    collector = Collector(broker.host, broker.port)
    with ModelServer(app) as server, contextlib.ExitStack() as stack:
        for i, agent_id in enumerate(AGENTS):
            home = tmp_path / agent_id
            cfg = base_config(home, broker, v1, agent_id=agent_id,
                              updates={"enabled": True, "trusted_keys": [files.public_b64], "allow_http": True,
                                       "health": {"window_s": 1.0, "min_frames": 10}})
            if agent_id == CANARY:
                cfg["cameras"] = [{"id": "cam1", "source": str(black), "kind": "folder", "on_eof": "loop",
                                   "max_fps": 15}]
            else:
                cfg["cameras"][0]["synthetic"].update(seed=i, fps=15)
            home.mkdir()
            stack.enter_context(running(write_config(home / "agent.toml", cfg), seed=i))
        assert wait_until(lambda: all(_online(collector, a) for a in AGENTS), 20)
        cfg = PublishingConfig(model_name="shapes", signing_key=files.private, base_url=server.url,
                               mqtt_host=broker.host, mqtt_port=broker.port, rollout=rollout_policy)
        services = [PublishingService.open(cfg, registry=registry)]
        app.state.publishing = services[0]
        stack.callback(lambda: [s.close() for s in services])
        first = register_file(registry, v1, "shapes")  # the fleet model the agents were configured with
        services[0].controller.publish("shapes", first.version, Cohort("fleet"))
        yield Fleet(app, services, cfg, registry, collector, server.url, tmp_path)
    collector.close()
    registry.close()


class Fleet:
    def __init__(self, app, services, cfg, registry, collector, url, tmp_path):
        self.app, self.services, self.cfg, self.registry = app, services, cfg, registry
        self.collector, self.url, self.tmp_path = collector, url, tmp_path

    @property
    def svc(self) -> PublishingService:
        return self.services[-1]

    def restart(self) -> None:
        """Stop the publishing service (as a server stop does) and open a new one on the same registry."""
        self.svc.close()
        self.services.append(PublishingService.open(self.cfg, registry=self.registry, client_id="publisher-2"))
        self.app.state.publishing = self.svc

    def api(self, method: str, path: str) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, method=method, data=b"{}" if method == "POST" else None,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def status(self) -> dict:
        code, body = self.api("GET", "/api/models/shapes/rollout")
        assert code == 200, body
        return body

    def register(self, path) -> int:
        return self.registry.register(NewModel(name="shapes", file=path, task="classification",
                                               labels=("circle", "square", "triangle"))).version

    def running_version(self, agent_id: str) -> int | None:
        s = _online(self.collector, agent_id)
        return s.model_version if s and s.model_state == "ok" else None

    def first_ok(self, agent_id: str, version: int) -> int | None:
        """Index, in the order the collector heard them, of the agent's first healthy status on ``version``."""
        with self.collector.lock:
            return next((i for i, s in enumerate(self.collector.statuses) if s.agent_id == agent_id
                         and s.model_version == version and s.model_state == "ok"), None)

    def ever_ran(self, agent_id: str, version: int) -> bool:
        with self.collector.lock:
            return any(s.agent_id == agent_id and s.model_version == version for s in self.collector.statuses)


def _online(collector: Collector, agent_id: str):
    with collector.lock:
        mine = [s for s in collector.statuses if s.agent_id == agent_id]
    return mine[-1] if mine and mine[-1].state == "online" else None


def test_three_stages_reach_everyone_in_order(fleet):
    good = fleet.register(make_classifier(fleet.tmp_path / "good.onnx", version=2, scale=4.2))
    result = fleet.svc.controller.roll_out("shapes", good)
    assert result.outcome == "fleet", result.reasons
    assert result.canaries == [CANARY] and result.stage == 3
    half = result.members
    assert CANARY in half and 3 <= len(half) < len(AGENTS)
    assert wait_until(lambda: all(fleet.running_version(a) == good for a in AGENTS), 30)
    # each stage's agents ran the new model before the next stage's agents got it
    canary_ok = fleet.first_ok(CANARY, good)
    second = [fleet.first_ok(a, good) for a in half if a != CANARY]
    rest = [fleet.first_ok(a, good) for a in AGENTS if a not in half]
    assert canary_ok < min(second) and max(second) < min(rest)
    assert [p["stage"] for p in fleet.registry.publications("shapes", good)] == ["canary", "canary", "fleet"]
    assert fleet.registry.get("shapes", good).state == "fleet"
    status = fleet.status()
    assert (status["state"], status["outcome"], status["stage"], status["stages"]) == ("done", "fleet", 3, 3)
    assert [(s["name"], s["agents"]) for s in status["plan"]] == [
        ("canary", 1), ("half", len(half) - 1), ("everyone", len(AGENTS) - len(half))]
    assert wait_until(lambda: [s["on_new"] for s in fleet.status()["plan"]] == [s["agents"] for s in
                                                                               status["plan"]], 10)
    assert fleet.registry.rollouts("shapes")[0]["state"] == "done"


def test_a_failing_stage_halts_and_rolls_back_its_agents_only(fleet):
    bad = fleet.register(make_faulty_classifier(fleet.tmp_path / "nan.onnx", "nan", version=2))
    result = fleet.svc.controller.roll_out("shapes", bad)
    assert (result.outcome, result.stage, result.rollback_version) == ("halted", 2, bad + 1), result.reasons
    assert any("reverted" in r for r in result.reasons), result.reasons
    reached = set(result.members)
    assert CANARY in reached and len(reached) >= 3
    assert fleet.first_ok(CANARY, bad) is not None  # black frames: the canary stage passed
    assert wait_until(lambda: all(fleet.running_version(a) == bad + 1 for a in AGENTS), 30)
    for agent_id in AGENTS:  # the last stage never started: its agents never saw the bad version
        assert fleet.ever_ran(agent_id, bad) == (agent_id in reached), agent_id
    record = fleet.registry.get("shapes", bad)
    assert record.state == "halted" and "canaries failed at stage 2 (half)" in record.reason
    assert fleet.registry.rollouts("shapes")[0]["state"] == "halted"
    assert [p["stage"] for p in fleet.registry.publications("shapes", bad)] == ["canary", "canary"]


@pytest.mark.parametrize("rollout_policy", [policy(
    RolloutStage(name="canary", agents=(CANARY,), hold_s=2.0),
    RolloutStage(name="half", percent=50, min_agents=3, hold_s=30.0),
    RolloutStage(name="everyone", everyone=True, hold_s=0.0))])
def test_pause_resume_and_abort_through_the_api(fleet):
    good = fleet.register(make_classifier(fleet.tmp_path / "good.onnx", version=2, scale=4.2))
    assert fleet.api("POST", "/api/models/shapes/rollout/pause")[0] == 409  # nothing to pause yet
    fut = fleet.svc.controller.roll_out_async("shapes", good)
    assert wait_until(lambda: fleet.status().get("stage") == 1, 20), fleet.status()
    code, body = fleet.api("POST", "/api/models/shapes/rollout/pause")
    assert code == 200 and body["paused"] and body["state"] == "paused"
    # health is still judged while paused: the canary installs and passes its own window
    assert wait_until(lambda: fleet.status().get("ok") == 1, 20), fleet.status()
    frozen = fleet.status()["hold_left_s"]
    # paused past the canary's 2 s hold: still at stage 1, the clock stopped
    assert not wait_until(lambda: fleet.status()["stage"] != 1, 3.0)
    status = fleet.status()
    assert status["state"] == "paused" and status["hold_left_s"] == pytest.approx(frozen, abs=0.01)
    assert fleet.api("POST", "/api/models/shapes/rollout/pause")[0] == 409  # already paused
    code, body = fleet.api("POST", "/api/models/shapes/rollout/resume")
    assert code == 200 and not body["paused"]
    assert wait_until(lambda: fleet.status()["stage"] == 2, 10), fleet.status()
    assert fleet.api("POST", "/api/models/shapes/rollout/resume")[0] == 409  # not paused
    code, body = fleet.api("POST", "/api/models/shapes/rollout/abort")
    assert code == 200
    result = fut.result(20)
    assert (result.outcome, result.reasons, result.rollback_version) == (
        "halted", ["cancelled by an operator"], good + 1)
    assert fleet.registry.get("shapes", good).reason.startswith("cancelled")
    assert fleet.registry.rollouts("shapes")[0]["state"] == "aborted"
    assert wait_until(lambda: all(fleet.running_version(a) == good + 1 for a in AGENTS), 30)
    assert fleet.api("POST", "/api/models/shapes/rollout/abort")[0] == 409
    assert fleet.status()["outcome"] == "halted"


@pytest.mark.parametrize("rollout_policy", [policy(
    RolloutStage(name="canary", agents=(CANARY,), hold_s=1.0),
    RolloutStage(name="half", percent=50, min_agents=3, hold_s=8.0),
    RolloutStage(name="everyone", everyone=True, hold_s=0.0))])
def test_a_restarted_server_resumes_the_rollout_at_its_stage(fleet):
    good = fleet.register(make_classifier(fleet.tmp_path / "good.onnx", version=2, scale=4.2))
    fut = fleet.svc.controller.roll_out_async("shapes", good)
    assert wait_until(lambda: fleet.status().get("stage") == 2 and fleet.status().get("ok", 0) >= 3, 30), \
        fleet.status()
    fleet.restart()
    assert fut.result(5).outcome == "interrupted"
    row = fleet.registry.rollouts("shapes")[0]
    assert (row["state"], row["stage"]) == ("running", 1)
    # the new service picked it up at stage 2, without announcing stage 1 or 2 again, and finished it
    assert wait_until(lambda: fleet.status().get("outcome") == "fleet", 30), fleet.status()
    assert [p["stage"] for p in fleet.registry.publications("shapes", good)] == ["canary", "canary", "fleet"]
    assert wait_until(lambda: all(fleet.running_version(a) == good for a in AGENTS), 30)
    assert fleet.registry.rollouts("shapes")[0]["state"] == "done"
