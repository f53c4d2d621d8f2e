"""A lightweight simulated fleet for rollout tests and benchmarks: real MQTT, real HTTP, real checks.

Each ``SimAgent`` is one paho connection (retained status with an offline
last will, like the real agent) that reacts to announcements of its model:
verify the signature and expiry (``protocol.manifest.verify``), skip other
cohorts and non-newer versions, download the file over HTTP and check its
size and sha256, install it and report the new version; then (``load_model``)
run one zero input in onnxruntime and, like the real agent's health window,
go back to the previous version and report ``reverted`` when it outputs NaN.
It does not sample or send frames: the real agent (``agent/``) does that;
this exercises the publishing side at fleet scale.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from protocol import Announcement, ProtocolError, Status, Telemetry, decode, encode
from protocol.manifest import Manifest, verify
from protocol.modelcard import CARD_METADATA_KEY, ClassificationOutput, InputSpec, ModelCard
from protocol.topics import announce_topic, status_topic, telemetry_topic

log = logging.getLogger(__name__)


def tiny_classifier(path: str | Path, name: str, labels: tuple[str, ...], version: int = 1,
                    nan: bool = False, seed: int = 0, pad_bytes: int = 0) -> Path:
    """Write a single-file ONNX classifier (mean colour -> linear) with its card.

    ``nan``: the output is NaN (a model that loads but fails); ``pad_bytes``: an
    extra weight tensor (added to the output times 0) so downloads have a realistic size.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(3, len(labels))).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(len(labels),)).astype(np.float32), "b")
    axes = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")
    nodes = [helper.make_node("ReduceMean", ["images", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["logits" if not nan else "pre"])]
    inits = [w, b, axes]
    if pad_bytes > 0:
        # Used by the graph (x * 0 + logits), so onnxruntime cannot drop it as unused.
        inits += [numpy_helper.from_array(rng.normal(size=(pad_bytes // 4,)).astype(np.float32), "pad"),
                  numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "zero")]
        nodes += [helper.make_node("ReduceSum", ["pad"], ["padsum"], keepdims=1),
                  helper.make_node("Mul", ["padsum", "zero"], ["padzero"])]
        nodes[2] = helper.make_node("Add", ["mm", "b"], ["pre0"])
        nodes.append(helper.make_node("Add", ["pre0", "padzero"], ["logits" if not nan else "pre"]))
    if nan:
        inits.append(numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "nan"))
        nodes.append(helper.make_node("Mul", ["pre", "nan"], ["logits"]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                            [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, len(labels)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    card = ModelCard(name=name, version=version, task="classification", labels=labels,
                     input=InputSpec(width=8, height=8), output=ClassificationOutput())
    helper.set_model_props(model, {CARD_METADATA_KEY: card.to_json()})
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def run_once(data: bytes) -> str:
    """Load a model in onnxruntime and infer one zero image; "" when healthy, else why not."""
    import numpy as np
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        out = sess.run(None, {inp.name: np.zeros(shape, dtype=np.float32)})[0]
    except Exception as e:  # onnxruntime raises its own exception types for broken graphs
        return f"model does not run: {e}"[:300]
    if not np.isfinite(out).all():
        return "model outputs NaN/inf"
    return ""


@dataclass
class SimAgent:
    agent_id: str
    host: str
    port: int
    model_name: str
    keys: list
    version: int = 1
    groups: tuple[str, ...] = ()
    download: bool = True  # False: the bare baseline (the payload is just the version number)
    load_model: bool = True
    telemetry_s: float = 0.0  # > 0: send Telemetry this often (frames, inference errors, fps)
    erroring_versions: tuple[int, ...] = ()  # versions that load fine but fail at inference time
    installed: list[int] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    reported_at: dict[int, float] = field(default_factory=dict)  # version -> time.perf_counter() of the report

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.agent_id)
        c.will_set(status_topic(self.agent_id), encode(self._status("offline", "ok", "")), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *_a: self._ready.set()
        c.on_message = self._on_message
        self.client = c
        self._stop = threading.Event()
        self._frames = self._errors = 0

    def _status(self, state: str, model_state: str, detail: str) -> Status:
        return Status(agent_id=self.agent_id, state=state, at=time.time(), software_version="sim",
                      model_name=self.model_name, model_version=self.version, model_state=model_state,
                      cohorts=self.groups, detail=detail)

    def _report(self, model_state: str, detail: str = "") -> None:
        self.client.publish(status_topic(self.agent_id), encode(self._status("online", model_state, detail)),
                            qos=1, retain=True)

    def _on_connect(self, client, _u, _f, reason_code, _p) -> None:
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._report("ok")
        client.subscribe(announce_topic(self.model_name), qos=1)

    def start(self) -> "SimAgent":
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if self.telemetry_s > 0:
            threading.Thread(target=self._telemetry_loop, name=f"telemetry-{self.agent_id}", daemon=True).start()
        return self

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(self.telemetry_s):
            with self._lock:
                version = self.version
                self._frames += 10
                self._errors += 10 if version in self.erroring_versions else 0
                t = Telemetry(agent_id=self.agent_id, at=time.time(), period_s=self.telemetry_s,
                              model_version=version, fps=10.0, latency_p50_ms=1.0, latency_p99_ms=2.0,
                              frames=self._frames, sampled=0, inference_errors=self._errors, outbox_depth=0,
                              outbox_bytes=0, drops={}, conf_hist={})
            self.client.publish(telemetry_topic(self.agent_id), encode(t), qos=0)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self._ready.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, _client, _u, msg) -> None:
        if not msg.payload:
            return
        if not self.download:  # the baseline: a bare message carrying the version number
            self._install(int(msg.payload))
            return
        try:
            ann = decode(msg.topic, msg.payload)
            if not isinstance(ann, Announcement):
                return
            manifest = verify(ann.manifest, ann.signature, self.keys)
        except ProtocolError as e:
            self._refuse(f"{e.reason}: {e}")
            return
        if not manifest.cohort.includes(manifest.name, self.agent_id, self.groups) or manifest.version <= self.version:
            return
        data, problem = self._fetch(ann.url, manifest)
        if problem:
            self._refuse(problem)
            return
        previous = self.version
        self._install(manifest.version)
        problem = run_once(data) if self.load_model else ""
        if problem:
            # Like the real agent's health window: the new model runs badly, go back to the previous one.
            with self._lock:
                self.version = previous
            self._report("reverted", f"v{manifest.version} failed its health check ({problem}); back on v{previous}")

    def _fetch(self, url: str, manifest: Manifest) -> tuple[bytes, str]:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                data = resp.read(manifest.size + 1)
        except OSError as e:
            return b"", f"download_failed: {e}"
        if len(data) != manifest.size or hashlib.sha256(data).hexdigest() != manifest.sha256:
            return b"", f"sha256_mismatch: {url} does not match the signed size/sha256"
        return data, ""

    def _install(self, version: int) -> None:
        with self._lock:
            self.version = version
            self.installed.append(version)
            self.reported_at[version] = time.perf_counter()
        self._report("ok", f"updated to v{version}")

    def _refuse(self, why: str) -> None:
        with self._lock:
            self.refused.append(why)
        self._report("failed", f"refused update: {why}"[:1000])


class ModelServer:
    """Serve a FastAPI app with uvicorn on a free loopback port in a thread (tests, benchmarks, demo)."""

    def __init__(self, app, host: str = "127.0.0.1") -> None:
        import socket

        import uvicorn

        with socket.socket() as s:  # a free port, asked of the kernel (trainer must not import edgeloop)
            s.bind((host, 0))
            port = s.getsockname()[1]
        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning",
                                                    access_log=False, lifespan="off"))
        self._thread = threading.Thread(target=self.server.run, name="model-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "ModelServer":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the model server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(10)
