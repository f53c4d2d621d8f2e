"""`edgeloop bench rollout --agents 100 --json FILE`: time for a fleet to run a newly announced model.

Project (``seconds``): N real agents (``bench.fleet``: whole ``agent.pipeline.Agent``
instances, spread over ``--processes`` worker processes, each with its own MQTT
connection, synthetic camera and inference loop) get the signed retained
announcement and run it through the real Updater and ModelStore: verify the
Ed25519 signature, cohort and version; download over HTTP from the real
router (uvicorn); check size and sha256; write and fsync under their
model store; refuse external data; load in onnxruntime, warm up (the first
inference), check shapes and labels, swap, and publish a retained Status
naming the new version. Measured from just before the announcement is
published to the last agent's Status, as the server would see it; also to
each agent's health window passing (``ok``: the new model has inferred
camera frames).

Baseline (``baseline_seconds``), same run, same broker: N agents that only
receive a bare retained message carrying the version number and report it
(no download, no verify, no load). ``ratio`` = project / baseline (a latency:
lower is better). ``sim_agents`` is the earlier in-process measurement
(``trainer.publish.simfleet.SimAgent``: threads in this process that verify,
download, check and load, but keep no model store and run no camera), kept
as a second, labelled line.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from edgeloop.broker import LocalBroker


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=100, help="agents (default 100)")
    parser.add_argument("--processes", type=int, default=4, help="worker processes the agents run in (default 4)")
    parser.add_argument("--no-sim", action="store_true", help="skip the SimAgent line")
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


def _real(broker: LocalBroker, work: Path, args: argparse.Namespace) -> dict:
    from fastapi import FastAPI

    from bench.fleet import Fleet, StatusWatch, agent_config
    from protocol.manifest import Cohort
    from trainer.publish import keys
    from trainer.publish.mqttlink import MqttLink, MqttSettings
    from trainer.publish.publisher import PublishConfig, Publisher
    from trainer.publish.registry import NewModel, Registry
    from trainer.publish.routes import router
    from trainer.publish.simfleet import ModelServer, tiny_classifier

    files = keys.generate(work / "keys")
    registry = Registry(work / "data")
    app = FastAPI()
    app.state.registry = registry
    app.include_router(router)
    labels = ("cat", "dog")
    v1 = tiny_classifier(work / "v1.onnx", "fleet", labels, version=1, pad_bytes=args.model_kb * 1024)
    v2 = tiny_classifier(work / "v2.onnx", "fleet", labels, version=2, seed=1, pad_bytes=args.model_kb * 1024)
    registry.register(NewModel(name="fleet", file=v1, task="classification", labels=labels))
    record = registry.register(NewModel(name="fleet", file=v2, task="classification", labels=labels,
                                        parent_version=1))
    configs = [agent_config(i, work / "agents", broker, v1, "fleet", files.public_b64, fps=5.0)
               for i in range(args.agents)]
    ids = [c["agent_id"] for c in configs]
    watch = StatusWatch(broker)
    try:
        with ModelServer(app) as server, Fleet(configs, work, args.processes):
            watch.wait(ids, lambda a: a in watch.online and watch.version.get(a) == 1, args.timeout, "came online")
            link = MqttLink(MqttSettings(broker.host, broker.port, client_id="bench-publisher-real")).start()
            publisher = Publisher(registry, keys.load_signing_key(files.private), link,
                                  PublishConfig(base_url=server.url))
            try:
                t0 = time.perf_counter()
                publisher.announce("fleet", record.version, Cohort(stage="fleet"))
                v = record.version
                watch.wait(ids, lambda a: (a, v) in watch.seen, args.timeout, f"reported v{v}")
                swapped = sorted(watch.seen[(a, v)] - t0 for a in ids)
                watch.wait(ids, lambda a: (a, v) in watch.ok, args.timeout, f"passed v{v}'s health window")
                healthy = sorted(watch.ok[(a, v)] - t0 for a in ids)
            finally:
                link.stop()
            on_disk = sum((work / "agents" / f"agent-{i:03d}" / "models" / f"v{v}").is_dir()
                          for i in range(args.agents))
    finally:
        watch.close()
        registry.close()
    return {**_figures(swapped), "health_ok_seconds": round(healthy[-1], 4), "model_bytes": record.size,
            "processes": args.processes, "stores_with_new_version": on_disk}


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
            real = _real(broker, work / "real", args)
            sim = None if args.no_sim else _project(broker, work / "sim", args)
        finally:
            broker.stop()
    return {
        "agents": args.agents, "broker": broker.kind,
        "project": real, "baseline": baseline,
        "seconds": real["seconds"], "baseline_seconds": baseline["seconds"],
        "ratio": round(real["seconds"] / baseline["seconds"], 2) if baseline["seconds"] > 0 else None,
        "sim_agents": None if sim is None else {**sim, "load_model": not args.no_load,
                                                 "what": "in-process SimAgents: verify, download, load; no store"},
        "goal_seconds": 5.0,
    }
