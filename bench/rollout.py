"""`edgeloop bench rollout --agents 100 --json FILE`: time for a fleet to run a newly announced model.

Project: N simulated agents (``trainer.publish.simfleet.SimAgent``: one real
paho connection each, threads in this process) receive a signed retained
announcement, verify it with ``protocol.manifest.verify``, download the model
over HTTP from the real router (uvicorn), check size and sha256, load it in
onnxruntime and run it once, then report the new version in a retained
status. Measured from just before the announcement is published to the last
agent's report.

Baseline, same run, same broker: N agents that only receive a bare retained
message carrying the version number and report it (no download, no verify).
``ratio`` = project seconds / baseline seconds (lower is better; it is a latency).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from edgeloop.broker import LocalBroker


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=100, help="simulated agents (default 100)")
    parser.add_argument("--model-kb", type=int, default=1024, help="model file size in KiB (default 1024)")
    parser.add_argument("--no-load", action="store_true", help="agents skip the onnxruntime load and run")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")


def _wait_all(agents, version: int, t0: float, timeout: float) -> list[float]:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if all(version in a.reported_at for a in agents):
            return sorted(a.reported_at[version] - t0 for a in agents)
        time.sleep(0.005)
    done = sum(version in a.reported_at for a in agents)
    raise TimeoutError(f"only {done} of {len(agents)} agents reported v{version} within {timeout:.0f}s")


def _start(agents) -> None:
    for a in agents:
        a.start()
    for a in agents:
        if not a.wait_ready(30):
            raise TimeoutError(f"{a.agent_id} did not subscribe")


def _stop(agents) -> None:
    for a in agents:
        a.stop()


def _figures(latencies: list[float]) -> dict:
    return {"seconds": round(latencies[-1], 4), "p50_seconds": round(statistics.median(latencies), 4)}


def _baseline(broker: LocalBroker, n: int, timeout: float) -> dict:
    from trainer.publish.mqttlink import MqttLink, MqttSettings
    from trainer.publish.simfleet import SimAgent
    from protocol.topics import announce_topic

    agents = [SimAgent(f"bare-{i}", broker.host, broker.port, "bare", [], download=False) for i in range(n)]
    _start(agents)
    link = MqttLink(MqttSettings(broker.host, broker.port, client_id="bench-bare")).start()
    try:
        t0 = time.perf_counter()
        link.publish(announce_topic("bare"), b"2", retain=True)
        return _figures(_wait_all(agents, 2, t0, timeout))
    finally:
        link.stop()
        _stop(agents)


def _project(broker: LocalBroker, work: Path, args: argparse.Namespace) -> dict:
    from fastapi import FastAPI

    from protocol.manifest import Cohort, load_public_key
    from trainer.publish import keys
    from trainer.publish.mqttlink import MqttLink, MqttSettings
    from trainer.publish.publisher import PublishConfig, Publisher
    from trainer.publish.registry import NewModel, Registry
    from trainer.publish.routes import router
    from trainer.publish.simfleet import ModelServer, SimAgent, tiny_classifier

    files = keys.generate(work / "keys")
    registry = Registry(work / "data")
    app = FastAPI()
    app.state.registry = registry
    app.include_router(router)
    labels = ("cat", "dog")
    model = tiny_classifier(work / "model.onnx", "bench", labels, pad_bytes=args.model_kb * 1024)
    record = registry.register(NewModel(name="bench", file=model, task="classification", labels=labels,
                                        parent_version=1))
    trusted = [load_public_key(files.public_b64)]
    agents = [SimAgent(f"agent-{i}", broker.host, broker.port, "bench", trusted, load_model=not args.no_load)
              for i in range(args.agents)]
    try:
        with ModelServer(app) as server:
            _start(agents)
            link = MqttLink(MqttSettings(broker.host, broker.port, client_id="bench-publisher")).start()
            publisher = Publisher(registry, keys.load_signing_key(files.private), link,
                                  PublishConfig(base_url=server.url))
            try:
                t0 = time.perf_counter()
                publisher.announce("bench", record.version, Cohort(stage="fleet"))
                figures = _figures(_wait_all(agents, record.version, t0, args.timeout))
            finally:
                link.stop()
            refused = sum(len(a.refused) for a in agents)
            _stop(agents)
    finally:
        registry.close()
    return {**figures, "model_bytes": record.size, "refused": refused}


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-rollout-") as tmp:
        work = Path(tmp)
        broker = LocalBroker(work / "broker")
        broker.start()
        try:
            baseline = _baseline(broker, args.agents, args.timeout)
            project = _project(broker, work, args)
        finally:
            broker.stop()
    return {
        "agents": args.agents, "broker": broker.kind, "load_model": not args.no_load,
        "project": project, "baseline": baseline,
        "seconds": project["seconds"], "baseline_seconds": baseline["seconds"],
        "ratio": round(project["seconds"] / baseline["seconds"], 2) if baseline["seconds"] > 0 else None,
        "goal_seconds": 5.0,
    }
