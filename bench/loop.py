"""`edgeloop bench loop`: from a batch's last label to every agent running the new model.

The real system on loopback (bench runs the same code as `edgeloop demo`):
a broker, the server with its rounds worker and staged rollout, agent
processes on drifting synthetic cameras. The bench labels one batch through
the REST API itself, then times each stage:

    queue wait   last label -> the trigger starts the round
    training     the worker's epochs (fit)
    export       ONNX export and its onnxruntime-vs-torch check, test metrics
    worker       process start-up, imports, data loading (the rest of the worker's wall time)
    register     registry copy + hash, splits saved
    gate         the promotion decision
    rollout      announce to canaries, their health window, widen to the fleet
    agents       announcement -> the last agent reports the new version (download, verify, load, swap)

There is no baseline to divide by: the figure is a latency (`seconds`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=2, help="agent processes (default 2)")
    parser.add_argument("--batch", type=int, default=30, help="labels in the batch (30-50, default 30)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per round (default 40, as the demo)")
    parser.add_argument("--data", type=Path, help="data folder (default: a temporary one)")


def _label_batch(demo, batch: int, timeout: float = 600.0) -> float:
    """Label ``batch`` queue items with their true labels; return when the last label was given."""
    from edgeloop.demo.oracle import Oracle, true_label

    oracle = Oracle(demo.server.url, demo.token, demo.cfg.seed)
    deadline = time.monotonic() + timeout
    done = 0
    try:
        while done < batch:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {batch} samples arrived in {timeout:.0f}s")
            items = oracle.client.get("/api/queue", params={"limit": batch - done}).raise_for_status().json()["items"]
            for item in items:
                label = true_label(item.get("frame_id") or "", demo.cfg.seed)
                if label is None:
                    continue
                oracle.client.post(f"/api/items/{item['id']}/label",
                                   json={"action": "label", "label": label}).raise_for_status()
                done += 1
            if done < batch:
                time.sleep(0.5)
        return time.time()
    finally:
        oracle.client.close()


def _agents_on(demo, version: int, n: int, timeout: float = 300.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        on = [a for a in demo.service.store.fleet() if (a.get("model_version") or 0) >= version]
        if len(on) >= n:
            return time.time()
        time.sleep(0.2)
    raise TimeoutError(f"not every agent reported v{version} within {timeout:.0f}s")


def run(args: argparse.Namespace) -> dict:
    from edgeloop.demo.layout import MODEL_NAME, DemoConfig
    from edgeloop.demo.runner import Demo

    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-loop-") as tmp:
        data = args.data or Path(tmp) / "data"
        demo = Demo(DemoConfig(data=data, agents=args.agents, http_port=0, batch_size=args.batch, epochs=args.epochs))
        try:
            demo.up()
            rounds = demo.service.rounds
            before = rounds.last.round_id if rounds.last else 0
            t_label = _label_batch(demo, args.batch)
            report = demo.wait_for_round(before)
            if report is None or report.state != "done":
                raise RuntimeError(f"the round did not finish: {report}")
            if not report.rollout_started:
                return {"seconds": None, "gate": report.gate.to_dict() if report.gate else None,
                        "note": "the gate refused the candidate: nothing to roll out"}
            rollout = rounds.rollouts[-1].result(timeout=300)
            t_all = _agents_on(demo, report.version, args.agents)
            started = demo.round_started(report.round_id)
            pubs = demo.registry.publications(MODEL_NAME, report.version)
            t_announced = pubs[-1]["at"] if pubs else t_all
            record = demo.registry.get(MODEL_NAME, report.version)
            fit = record.config.get("fit", {})
            fit_s = sum(e["seconds"] for e in fit.get("history", []))
            train_s = report.timings.get("train", 0.0)
            breakdown = {
                "queue_wait": started - t_label,
                "training": fit_s,
                "export_and_test": max(0.0, train_s - fit_s),
                "worker_overhead": max(0.0, report.timings.get("process", 0.0) - train_s),
                "register": report.timings.get("register", 0.0),
                "gate": report.timings.get("gate", 0.0),
                "rollout": rollout.seconds,
                "agents_after_last_announcement": max(0.0, t_all - t_announced),
            }
            return {"seconds": round(t_all - t_label, 2), "breakdown": {k: round(v, 2) for k, v in breakdown.items()},
                    "agents": args.agents, "batch": args.batch, "examples": len(demo.registry.examples_of(
                        MODEL_NAME, report.version)), "model": "small_cnn, 64 px input",
                    "epochs_run": len(fit.get("history", [])), "rollout_outcome": rollout.outcome,
                    "canary_window_s": demo.service.config.publish.rollout.window_s}
        finally:
            demo.down()
