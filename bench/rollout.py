"""`edgeloop bench rollout --agents 100 --json FILE`: time for a fleet to run a newly announced model.

Both sides get the same signed retained announcement from the real publisher
and download the same 1 MiB model from the same real router (uvicorn), with
their agents spread over the same number of worker processes, in the same run.
Each is timed from just before the announcement is published to the last
agent's retained status naming the new version.

Project (``seconds``): N real agents (``bench.fleet.Fleet``: whole
``agent.pipeline.Agent`` instances, each with its own MQTT connection,
synthetic camera and inference loop) run it through the real Updater and
ModelStore: verify the Ed25519 signature, expiry, cohort and version; check
the card against the manifest; download with size cap and deadline; check size
and sha256; refuse external data; write and fsync under the model store;
load in onnxruntime, warm up, check shapes and labels; commit state.json;
swap under the lock; publish the Status. Also timed: the new model passing
its health window on camera frames (``health_ok_seconds``).

Baseline (``baseline_seconds``): N ``bench.fleet.BareUpdater``s, what a
careful hand-written updater does, already running v1 like the agents: verify
the signature, download, check size and sha256, write with fsync and rename,
load in onnxruntime, run once, publish a one-line retained status. ``ratio`` = project / baseline (a
latency: lower is better).

``sim_agents`` is the earlier in-process measurement
(``trainer.publish.simfleet.SimAgent``: threads in this process that verify,
download, check and load, but keep no model store and run no camera), kept
as a second, labelled line.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgeloop.broker import LocalBroker

LABELS = ("cat", "dog")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=100, help="agents (default 100)")
    parser.add_argument("--processes", type=int, default=4, help="worker processes the agents run in (default 4)")
    parser.add_argument("--no-sim", action="store_true", help="skip the SimAgent line")
    parser.add_argument("--model-kb", type=int, default=1024, help="model file size in KiB (default 1024)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")


@dataclass
class Site:
    """Keys, registry, router and publisher shared by every measurement of one run."""

    work: Path
    public_b64: str
    registry: object
    server: object
    publisher: object
    link: object
    models: dict  # model name -> (v1 path, v2 record)


def _figures(latencies: list[float]) -> dict:
    return {"seconds": round(latencies[-1], 4), "p50_seconds": round(statistics.median(latencies), 4)}


def _site(broker: LocalBroker, work: Path, model_kb: int, names: list[str]):
    """Context manager: the publishing side, with v1 and v2 of each named model registered."""
    import contextlib

    from fastapi import FastAPI

    from trainer.publish import keys
    from trainer.publish.mqttlink import MqttLink, MqttSettings
    from trainer.publish.publisher import PublishConfig, Publisher
    from trainer.publish.registry import NewModel, Registry
    from trainer.publish.routes import router
    from trainer.publish.simfleet import ModelServer, tiny_classifier

    @contextlib.contextmanager
    def site():
        files = keys.generate(work / "keys")
        registry = Registry(work / "data")
        app = FastAPI()
        app.state.registry = registry
        app.include_router(router)
        models = {}
        for name in names:
            v1 = tiny_classifier(work / f"{name}-v1.onnx", name, LABELS, version=1, pad_bytes=model_kb * 1024)
            v2 = tiny_classifier(work / f"{name}-v2.onnx", name, LABELS, version=2, seed=1, pad_bytes=model_kb * 1024)
            registry.register(NewModel(name=name, file=v1, task="classification", labels=LABELS))
            models[name] = (v1, registry.register(NewModel(name=name, file=v2, task="classification",
                                                           labels=LABELS, parent_version=1)))
        try:
            with ModelServer(app) as server:
                link = MqttLink(MqttSettings(broker.host, broker.port, client_id="bench-publisher")).start()
                try:
                    publisher = Publisher(registry, keys.load_signing_key(files.private), link,
                                          PublishConfig(base_url=server.url))
                    yield Site(work, files.public_b64, registry, server, publisher, link, models)
                finally:
                    link.stop()
        finally:
            registry.close()
    return site()


def _announce(site: Site, name: str) -> float:
    from protocol.manifest import Cohort

    t0 = time.perf_counter()
    site.publisher.announce(name, site.models[name][1].version, Cohort(stage="fleet"))
    return t0


def _real(broker: LocalBroker, site: Site, args: argparse.Namespace) -> dict:
    from bench.fleet import Fleet, StatusWatch, agent_config

    v1, record = site.models["fleet"]
    configs = [agent_config(i, site.work / "agents", broker, v1, "fleet", site.public_b64, fps=5.0)
               for i in range(args.agents)]
    ids = [c["agent_id"] for c in configs]
    watch = StatusWatch(broker)
    try:
        with Fleet(configs, site.work, args.processes):
            watch.wait(ids, lambda a: a in watch.online and watch.version.get(a) == 1, args.timeout, "came online")
            v = record.version
            t0 = _announce(site, "fleet")
            watch.wait(ids, lambda a: (a, v) in watch.seen, args.timeout, f"reported v{v}")
            swapped = sorted(watch.seen[(a, v)] - t0 for a in ids)
            watch.wait(ids, lambda a: (a, v) in watch.ok, args.timeout, f"passed v{v}'s health window")
            healthy = sorted(watch.ok[(a, v)] - t0 for a in ids)
            on_disk = sum((site.work / "agents" / f"agent-{i:03d}" / "models" / f"v{v}").is_dir()
                          for i in range(args.agents))
    finally:
        watch.close()
    return {**_figures(swapped), "health_ok_seconds": round(healthy[-1], 4), "model_bytes": record.size,
            "processes": args.processes, "stores_with_new_version": on_disk}


def _bare(broker: LocalBroker, site: Site, args: argparse.Namespace) -> dict:
    from bench.fleet import BareFleet, BareWatch

    specs = [{"agent_id": f"bare-{i:03d}", "host": broker.host, "port": broker.port, "model": "bare",
              "folder": str(site.work / "bare" / f"{i:03d}"), "key": site.public_b64,
              "initial": str(site.models["bare"][0])} for i in range(args.agents)]
    ids = [s["agent_id"] for s in specs]
    watch = BareWatch(broker)
    try:
        with BareFleet(specs, args.processes):
            watch.wait(ids, 1, args.timeout)
            t0 = _announce(site, "bare")
            v = site.models["bare"][1].version
            watch.wait(ids, v, args.timeout)
            return {**_figures(sorted(watch.seen[(a, v)] - t0 for a in ids)), "processes": args.processes}
    finally:
        watch.close()


def _sim(broker: LocalBroker, site: Site, args: argparse.Namespace) -> dict:
    from protocol.manifest import load_public_key
    from trainer.publish.simfleet import SimAgent

    agents = [SimAgent(f"sim-{i}", broker.host, broker.port, "sim", [load_public_key(site.public_b64)])
              for i in range(args.agents)]
    for a in agents:
        a.start()
    try:
        for a in agents:
            if not a.wait_ready(30):
                raise TimeoutError(f"{a.agent_id} did not subscribe")
        version = site.models["sim"][1].version
        t0 = _announce(site, "sim")
        deadline = time.perf_counter() + args.timeout
        while not all(version in a.reported_at for a in agents):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"SimAgents did not all report v{version} within {args.timeout:.0f}s")
            time.sleep(0.005)
        return {**_figures(sorted(a.reported_at[version] - t0 for a in agents)),
                "refused": sum(len(a.refused) for a in agents),
                "what": "in-process SimAgents: verify, download, load; no store, no camera"}
    finally:
        for a in agents:
            a.stop()


def run(args: argparse.Namespace) -> dict:
    names = ["bare", "fleet"] + ([] if args.no_sim else ["sim"])
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-rollout-") as tmp:
        work = Path(tmp)
        with LocalBroker(work / "broker") as broker, _site(broker, work, args.model_kb, names) as site:
            baseline = _bare(broker, site, args)
            real = _real(broker, site, args)
            sim = None if args.no_sim else _sim(broker, site, args)
            kind = broker.kind
    return {
        "agents": args.agents, "broker": kind,
        "project": real, "baseline": baseline,
        "seconds": real["seconds"], "baseline_seconds": baseline["seconds"],
        "ratio": round(real["seconds"] / baseline["seconds"], 2) if baseline["seconds"] > 0 else None,
        "sim_agents": sim,
        "goal_seconds": 5.0,
    }
