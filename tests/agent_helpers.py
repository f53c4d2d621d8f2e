"""Helpers for the agent tests: tiny real ONNX models, config files, a receipt-sending collector."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
import paho.mqtt.client as mqtt
from onnx import TensorProto, helper, numpy_helper

from protocol import Announcement, Receipt, Sample, decode, encode
from protocol.manifest import Cohort, Manifest, file_sha256, generate_keypair, load_private_key, sign
from protocol.modelcard import CARD_METADATA_KEY
from protocol.topics import SAMPLES_FILTER, STATUS_FILTER, receipt_topic

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("circle", "square", "triangle")


@contextlib.contextmanager
def running(cfg_path: Path, seed: int = 1):
    """An Agent started in this process from a config file, with its status watcher; stopped on exit."""
    from agent.config import load_config
    from agent.pipeline import Agent

    agent = Agent(load_config(cfg_path), cfg_path, seed=seed).start()
    stop = threading.Event()
    watcher = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    watcher.start()
    try:
        yield agent
    finally:
        stop.set()
        watcher.join(5)
        agent.stop()


def classifier_card(name: str = "shapes", version: int = 1, labels=LABELS, size: int = 32, **input_spec) -> dict:
    return {"name": name, "version": version, "task": "classification", "labels": list(labels),
            "input": {"width": size, "height": size, "layout": "NCHW", "color": "RGB", **input_spec},
            "output": {"type": "classification", "activation": "softmax"}}


def make_classifier(path: Path, name: str = "shapes", version: int = 1, labels=LABELS, size: int = 32,
                    seed: int = 0, embed_card: bool = True, n_out: int | None = None, scale: float = 4.0,
                    layout: str = "NCHW") -> Path:
    """Mean colour -> linear layer -> logits: a real ONNX classifier whose confidence varies with the image."""
    rng = np.random.default_rng(seed)
    n_out = len(labels) if n_out is None else n_out
    w = (rng.normal(0, 1, (3, n_out)) * scale).astype(np.float32)
    b = rng.normal(0, 0.5, (n_out,)).astype(np.float32)
    nhwc = layout == "NHWC"
    nodes = [helper.make_node("Transpose", ["image"], ["chw"], perm=[0, 3, 1, 2])] if nhwc else []
    nodes += [helper.make_node("GlobalAveragePool", ["chw" if nhwc else "image"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(
            "image", TensorProto.FLOAT, [1, size, size, 3] if nhwc else [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, n_out])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if embed_card:
        card = classifier_card(name, version, labels, size, layout=layout)
        helper.set_model_props(model, {CARD_METADATA_KEY: json.dumps(card)})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_video(path: Path, images, fps: float = 10.0) -> Path:
    """Write BGR frames (all of one size) as an MJPG .avi: the tests' one video writer."""
    import cv2

    images = list(images)
    h, w = images[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    try:
        for image in images:
            writer.write(image)
    finally:
        writer.release()
    return path


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))


def write_config(path: Path, cfg: dict) -> Path:
    """A dict of sections -> TOML (top-level scalars, [tables], [[cameras]])."""
    lines = [f"{k} = {toml_value(v)}" for k, v in cfg.items() if not isinstance(v, (dict, list)) or k == "groups"]
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
    for cam in cfg.get("cameras", []):
        lines.append("\n[[cameras]]")
        lines += [f"{kk} = {toml_value(vv)}" for kk, vv in cam.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def base_config(tmp: Path, broker, model_path: Path, **sections) -> dict:
    cfg = {
        "agent_id": "agent-1", "data_dir": str(tmp / "data"),
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        "uplink": {"receipt_timeout_s": 3.0, "max_inflight": 16, "telemetry_period_s": 1.0},
        "model": {"name": "shapes", "path": str(model_path), "providers": ["cpu"], "intra_op_threads": 1},
        "cameras": [{"id": "cam1", "source": "synthetic", "synthetic": {"seed": 1, "width": 96, "height": 72}}],
        "sampling": {"strategies": [{"name": "least_confidence", "threshold": 0.3}], "per_minute": 100000,
                     "per_hour": 100000, "per_day": 100000, "class_share": 1.0, "dedup_hamming": 0, "seed": 1},
        "outbox": {"max_bytes": 64 * 1024 * 1024},
        # a short health window after installs, like the short receipt and telemetry periods above
        "updates": {"enabled": False, "health": {"window_s": 1.0, "min_frames": 10}},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg[k], **v} if isinstance(cfg.get(k), dict) else v
    return cfg


class Collector:
    """A receipt-sending subscriber: records every sample (duplicates too) and acknowledges it."""

    def __init__(self, host: str, port: int, send_receipts: bool = True, username: str | None = None,
                 password: str | None = None) -> None:
        self.lock = threading.Lock()
        self.received: list[Sample] = []
        self.statuses: list = []
        self.send_receipts = send_receipts
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"collector-{time.monotonic_ns()}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(SAMPLES_FILTER, 1), (STATUS_FILTER, 1)])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("collector subscription not acknowledged")

    def _on_message(self, client, userdata, msg) -> None:
        message = decode(msg.topic, msg.payload)
        with self.lock:
            if isinstance(message, Sample):
                self.received.append(message)
            else:
                self.statuses.append(message)
        if isinstance(message, Sample) and self.send_receipts:
            receipt = Receipt(stored=(message.frame_id,), at=time.time())
            client.publish(receipt_topic(message.agent_id), encode(receipt), qos=1)

    def ids(self) -> set[str]:
        with self.lock:
            return {s.frame_id for s in self.received}

    def last_status(self):
        with self.lock:
            return self.statuses[-1] if self.statuses else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class FileServer:
    """http.server in a thread, serving one directory."""

    def __init__(self, root: Path) -> None:
        handler = partial(SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *a: None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def announcement(model_file: Path, key, url: str, version: int, name: str = "shapes", labels=LABELS,
                 card: dict | None = None, expires_in: float = 3600, size: int | None = None,
                 sha: str | None = None, cohort: Cohort | None = None) -> Announcement:
    card = card if card is not None else classifier_card(name, version, labels)
    now = int(time.time())
    manifest = Manifest(name=name, version=version, sha256=sha or file_sha256(model_file),
                        size=size or model_file.stat().st_size, task=card["task"], labels=tuple(labels), card=card,
                        created=now, expires=int(now + expires_in), cohort=cohort or Cohort())
    data, sig = sign(manifest, key)
    return Announcement(manifest=data, signature=sig, url=url)


def make_detector(path: Path, grid: int = 4, size: int = 32, labels=("blob",), gain: float = 12.0) -> Path:
    """A real SSD-style ONNX detector: one box per grid cell, its score rises with the cell's brightness.

    Outputs ``scores [1, grid*grid, 1 + len(labels)]`` (background first) and ``boxes [1, grid*grid, 4]``
    normalized x1, y1, x2, y2; the card in its metadata asks the agent for NMS.
    """
    n, k = grid * grid, size // grid
    cells = [[c / grid, r / grid, (c + 1) / grid, (r + 1) / grid] for r in range(grid) for c in range(grid)]
    inits = [numpy_helper.from_array(np.array([cells], np.float32), "grid"),
             numpy_helper.from_array(np.array([1.0], np.float32), "one"),
             numpy_helper.from_array(np.array([gain], np.float32), "gain"),
             numpy_helper.from_array(np.array([0.5], np.float32), "half"),
             numpy_helper.from_array(np.array([1, n, 1], np.int64), "shape")]
    nodes = [helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[k, k], strides=[k, k]),
             helper.make_node("ReduceMean", ["pooled"], ["gray"], axes=[1], keepdims=1),
             helper.make_node("Reshape", ["gray", "shape"], ["flat"]),
             helper.make_node("Sub", ["flat", "half"], ["centred"]),
             helper.make_node("Mul", ["centred", "gain"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["fg"]),
             helper.make_node("Sub", ["one", "fg"], ["bg"]),
             helper.make_node("Concat", ["bg"] + ["fg"] * len(labels), ["scores"], axis=2),
             helper.make_node("Mul", ["grid", "one"], ["boxes"])]
    graph = helper.make_graph(
        nodes, "tiny_ssd", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, n, 1 + len(labels)]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, n, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = {"name": "blobs", "version": 1, "task": "detection", "labels": list(labels),
            "input": {"width": size, "height": size},
            "output": {"type": "ssd", "score_threshold": 0.5, "iou_threshold": 0.3, "background_class": 0}}
    helper.set_model_props(model, {CARD_METADATA_KEY: json.dumps(card)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_faulty_classifier(path: Path, fault: str, name: str = "shapes", version: int = 2, labels=LABELS,
                           size: int = 32, seed: int = 0) -> Path:
    """A real ONNX classifier that loads, warms up on the zero tensor and fits its card, but fails on real frames.

    ``fault="nan"``: logits = W·sqrt(-mean colour) + b, finite for the zero warm-up, NaN for any frame that is
    not black. ``fault="error"``: it gathers from a one-entry table at an index computed from the brightest
    pixel, so onnxruntime raises "out of bounds" for any frame that is not black.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    inits = [numpy_helper.from_array((rng.normal(0, 1, (3, n)) * 4).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.5, (n,)).astype(np.float32), "b")]
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"])]
    if fault == "nan":
        nodes += [helper.make_node("Neg", ["flat"], ["neg"]), helper.make_node("Sqrt", ["neg"], ["feat"]),
                  helper.make_node("Gemm", ["feat", "w", "b"], ["logits"])]
    elif fault == "error":
        inits += [numpy_helper.from_array(np.array([100.0], np.float32), "hundred"),
                  numpy_helper.from_array(np.zeros((1, n), np.float32), "table")]
        nodes += [helper.make_node("ReduceMax", ["image"], ["peak"], keepdims=0),
                  helper.make_node("Mul", ["peak", "hundred"], ["scaled"]),
                  helper.make_node("Cast", ["scaled"], ["index"], to=TensorProto.INT64),
                  helper.make_node("Gather", ["table", "index"], ["offset"], axis=0),
                  helper.make_node("Gemm", ["flat", "w", "b"], ["raw"]),
                  helper.make_node("Add", ["raw", "offset"], ["logits"])]
    else:
        raise ValueError(f"unknown fault {fault!r}")
    graph = helper.make_graph(
        nodes, f"faulty_{fault}", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {CARD_METADATA_KEY: json.dumps(classifier_card(name, version, labels, size))})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# Fixtures shared by the update tests (test modules import them by name).
@pytest.fixture
def keys():
    private, public = generate_keypair()
    return load_private_key(private), public.decode()


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = FileServer(root)
    yield root, server.url
    server.close()


def make_constant_model(path: Path, outputs: dict[str, np.ndarray], input_shape=(1, 3, 32, 32),
                        input_dtype: str = "float32", card: dict | None = None, fault: str | None = None) -> Path:
    """A real ONNX model whose outputs are the given tensors whatever the frame, so the decode is known.

    Each output is ``value + 0 * mean(input)`` (the input is really read); with ``fault="nan"`` the term is
    ``0 * sqrt(-mean(input))``: finite for the zero warm-up tensor, NaN for any frame that is not black.
    ``card`` goes into the metadata when given (otherwise give the runner a card file).
    """
    elem = TensorProto.FLOAT if input_dtype == "float32" else TensorProto.UINT8
    nodes = [helper.make_node("Cast", ["image"], ["as_float"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["as_float"], ["mean"], keepdims=0)]
    if fault == "nan":
        nodes += [helper.make_node("Neg", ["mean"], ["neg"]), helper.make_node("Sqrt", ["neg"], ["root"]),
                  helper.make_node("Mul", ["root", "zero"], ["term"])]
    else:
        nodes.append(helper.make_node("Mul", ["mean", "zero"], ["term"]))
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    outs = []
    for name, value in outputs.items():
        value = np.asarray(value, np.float32)
        inits.append(numpy_helper.from_array(value, f"{name}_value"))
        nodes.append(helper.make_node("Add", [f"{name}_value", "term"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "constant", [helper.make_tensor_value_info("image", elem, list(input_shape))],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if card is not None:
        helper.set_model_props(model, {CARD_METADATA_KEY: json.dumps(card)})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def outbox_uplink(broker, tmp: Path, agent_id: str = "cam-agent-1", receipt_timeout_s: float = 1.0,
                  max_inflight: int | None = None):
    """A real agent outbox and uplink (no camera, no model): put frames with ``put_sample(outbox, s)``,
    ``uplink.start()``; frames leave the outbox only on a receipt, as on a device."""
    import random as _random

    import factories
    from agent.config import parse_config
    from agent.metrics import Counters
    from agent.outbox import Outbox
    from agent.uplink import Uplink

    uplink_cfg = {"receipt_timeout_s": receipt_timeout_s, **({"max_inflight": max_inflight} if max_inflight else {})}
    cfg = parse_config({"agent_id": agent_id, "data_dir": str(tmp), "model": {"name": "shapes",
                        "path": str(tmp / "unused.onnx")}, "mqtt": {"host": broker.host, "port": broker.port},
                        "uplink": uplink_cfg, "cameras": [{"id": "gate", "source": "synthetic"}]}, tmp, "test")
    outbox = Outbox(tmp / "outbox.sqlite", 256 * 1024 * 1024)
    uplink = Uplink(cfg, outbox, Counters(), _random.Random(1),
                    status=lambda state: factories.status(agent_id=agent_id, state=state, at=time.time()),
                    telemetry=lambda: factories.telemetry(agent_id=agent_id, at=time.time()),
                    on_command=lambda c: None, on_announcement=lambda a: None)
    return outbox, uplink


def put_sample(outbox, s: Sample) -> None:
    from protocol.topics import sample_topic

    outbox.put(s.frame_id, sample_topic(s.agent_id, s.camera_id), s.camera_id, s.uncertainty, encode(s)).result()
