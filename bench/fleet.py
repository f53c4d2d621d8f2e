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


class BareUpdater:
    """The baseline agent: what a careful hand-written updater does, and nothing more.

    On the signed retained announcement: decode it and verify the Ed25519
    signature (the protocol package, as any client would), download the file,
    check its size and sha256, write it with fsync and an atomic rename, load
    it in onnxruntime (one intra-op thread, like the agents), run it once on
    zeros, and publish a retained one-line status. No camera, no outbox, no
    health window, no state file.
    """

    def __init__(self, agent_id: str, broker, folder: Path, model_name: str, trusted_key: str,
                 initial: Path, initial_version: int = 1) -> None:
        from protocol.manifest import load_public_key
        from protocol.topics import announce_topic

        self.agent_id, self.folder = agent_id, folder
        self.keys = [load_public_key(trusted_key)]
        folder.mkdir(parents=True, exist_ok=True)
        self.session = self._load(initial)  # it runs a model already, as the agents do
        self.version = initial_version
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bare-{agent_id}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(announce_topic(model_name), 1)
        self.client.on_message = lambda c, u, msg: self._apply(msg.topic, msg.payload)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.publish_status()

    def publish_status(self) -> None:
        self.client.publish(f"bench/bare/{self.agent_id}", str(self.version).encode(), qos=1, retain=True)

    def _apply(self, topic: str, payload: bytes) -> None:
        import hashlib
        import os
        import urllib.request

        from protocol import decode
        from protocol.manifest import verify

        ann = decode(topic, payload)
        manifest = verify(ann.manifest, ann.signature, self.keys)
        if manifest.version <= self.version:
            return
        with urllib.request.urlopen(ann.url, timeout=60) as response:
            data = response.read(manifest.size + 1)
        if len(data) != manifest.size or hashlib.sha256(data).hexdigest() != manifest.sha256:
            return
        path, tmp = self.folder / f"v{manifest.version}.onnx", self.folder / f".v{manifest.version}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self.session, self.version = self._load(path), manifest.version
        self.publish_status()

    @staticmethod
    def _load(path: Path):
        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        session.run(None, {inp.name: np.zeros([d if isinstance(d, int) else 1 for d in inp.shape], np.float32)})
        return session

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _bare_worker(specs: list[dict], ready, stop) -> None:
    from types import SimpleNamespace

    import urllib.request  # noqa: F401  imported before the clock starts, as a running agent has it

    agents = []
    try:
        for s in specs:
            broker = SimpleNamespace(host=s["host"], port=s["port"])
            agents.append(BareUpdater(s["agent_id"], broker, Path(s["folder"]), s["model"], s["key"],
                                      Path(s["initial"])))
        ready.put(len(agents))
        stop.wait()
    except Exception as e:
        ready.put(f"{type(e).__name__}: {e}")
    finally:
        for agent in agents:
            agent.close()


class BareFleet(Fleet):
    """``BareUpdater``s spread over worker processes, like :class:`Fleet`."""

    def __init__(self, specs: list[dict], processes: int) -> None:
        ctx = mp.get_context("spawn")
        self._ready, self._stop = ctx.Queue(), ctx.Event()
        self._procs = [ctx.Process(target=_bare_worker, args=(specs[p::processes], self._ready, self._stop),
                                   daemon=True) for p in range(processes) if specs[p::processes]]


class BareWatch:
    """When each bare agent's retained one-line status first named a version."""

    def __init__(self, broker) -> None:
        self.lock = threading.Lock()
        self.seen: dict[tuple[str, int], float] = {}
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-bare-watch-{time.monotonic_ns()}")

        def on_message(c, u, msg) -> None:
            with self.lock:
                self.seen.setdefault((msg.topic.rsplit("/", 1)[1], int(msg.payload)), time.perf_counter())

        client.on_message = on_message
        client.on_connect = lambda c, u, f, rc, p: c.subscribe("bench/bare/+", 1)
        client.connect(broker.host, broker.port)
        client.loop_start()
        self.client = client

    def wait(self, agents: list[str], version: int, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self.lock:
                if all((a, version) in self.seen for a in agents):
                    return
            time.sleep(0.005)
        raise TimeoutError(f"bare agents did not all report v{version} within {timeout:.0f}s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
