"""Real agents for the benchmarks: many ``agent.pipeline.Agent`` instances spread over worker processes.

Each worker process (``spawn``, so no parent state leaks in) starts its share
of agents, each a whole agent as ``edgeloop agent`` runs it: its own MQTT
connection with a last will and a retained Status, a synthetic camera, the
inference loop, the disk outbox, and the real Updater and ModelStore (verify
the signature, download, check size and sha256, write and fsync under
``data_dir/models``, load, warm up, swap, health window). A
:class:`StatusWatch` in the parent reads their retained Status messages from
the broker, the way the server learns what the fleet runs.

Threads: each agent brings its own (see agent.pipeline); the parent waits on
the workers' ready queue and on the watch's paho thread.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt


def agent_config(i: int, work: Path, broker, model: Path, name: str, trusted_key: str, fps: float) -> dict:
    return {
        "agent_id": f"fleet-{i:03d}", "data_dir": str(work / f"agent-{i:03d}"),
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
        "model": {"name": name, "path": str(model), "providers": ["cpu"], "intra_op_threads": 1},
        "cameras": [{"id": "cam", "source": "synthetic", "max_fps": fps,
                     "synthetic": {"seed": i, "width": 64, "height": 48}}],
        # Nothing is sampled: this fleet is here to be updated, not to upload.
        "sampling": {"strategies": [{"name": "least_confidence", "threshold": 1.0}]},
        "updates": {"enabled": True, "trusted_keys": [trusted_key], "allow_http": True,
                    "health": {"window_s": 1.0, "min_frames": 3}},
    }


def _worker(configs: list[dict], base: str, ready, stop) -> None:
    import logging

    from agent.config import parse_config
    from agent.pipeline import Agent

    logging.basicConfig(level=logging.WARNING)
    agents = []
    try:
        for i, cfg in enumerate(configs):
            agents.append(Agent(parse_config(cfg, Path(base)), seed=i).start())
        ready.put(len(agents))
        stop.wait()
    except Exception as e:  # the parent must hear of it, not wait for a count that never comes
        ready.put(f"{type(e).__name__}: {e}")
    finally:
        for agent in agents:
            agent.stop()


class Fleet:
    """``n`` real agents in ``processes`` worker processes; a context manager."""

    def __init__(self, configs: list[dict], base: Path, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self._ready, self._stop = ctx.Queue(), ctx.Event()
        shares = [configs[p::processes] for p in range(processes)]
        self._procs = [ctx.Process(target=_worker, args=(share, str(base), self._ready, self._stop), daemon=True)
                       for share in shares if share]

    def __enter__(self) -> "Fleet":
        for proc in self._procs:
            proc.start()
        for _ in self._procs:
            got = self._ready.get(timeout=300)
            if isinstance(got, str):
                raise RuntimeError(f"a fleet worker failed to start its agents: {got}")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for proc in self._procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()


class StatusWatch:
    """When each agent's retained Status first showed a model version (and when that version was judged ok)."""

    def __init__(self, broker) -> None:
        from protocol import Status, decode
        from protocol.topics import STATUS_FILTER

        self.lock = threading.Lock()
        self.version: dict[str, int] = {}
        self.seen: dict[tuple[str, int], float] = {}  # (agent, version) -> first time it reported running it
        self.ok: dict[tuple[str, int], float] = {}  # ... and first time with model_state ok
        self.online: set[str] = set()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-watch-{time.monotonic_ns()}")

        def on_message(c, u, msg) -> None:
            try:
                s = decode(msg.topic, msg.payload)
            except Exception:
                return
            if not isinstance(s, Status):
                return
            now = time.perf_counter()
            with self.lock:
                (self.online.add if s.state == "online" else self.online.discard)(s.agent_id)
                self.version[s.agent_id] = s.model_version
                self.seen.setdefault((s.agent_id, s.model_version), now)
                if s.model_state == "ok":
                    self.ok.setdefault((s.agent_id, s.model_version), now)

        client.on_message = on_message
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(STATUS_FILTER, 1)
        client.connect(broker.host, broker.port)
        client.loop_start()
        self.client = client

    def wait(self, agents: list[str], pred, timeout: float, what: str) -> None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self.lock:
                if all(pred(a) for a in agents):
                    return
            time.sleep(0.005)
        with self.lock:
            done = sum(bool(pred(a)) for a in agents)
        raise TimeoutError(f"only {done} of {len(agents)} agents {what} within {timeout:.0f}s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
