"""``edgeloop bench agent``: the full agent pipeline against a strong bare onnxruntime loop.

Pipeline: the real Agent with a video-file camera (a grabber thread decodes;
the inference loop preprocesses into reused buffers, infers, samples; JPEG ->
SQLite outbox -> MQTT to a local broker; receipts come back from a minimal
collector stand-in that receipts what it receives, since this benchmark
measures the agent and ``bench ingest`` measures the collector). The clock
runs from the first inferred frame to the moment every frame is inferred AND
every picked frame has been delivered and receipted (the outbox is empty);
the JSON says how many frames were picked and receipted.

Baseline, in the same run, on the same model, video and thread count: what a
careful hand-written script does. A decoder thread reads the video into a
bounded queue (as the agent's grabber does), the main thread resizes into a
reused buffer, converts to normalized NCHW float32 into another reused
buffer, and calls ``session.run`` (``bare_fps``, the ``ratio``). Also
``session.run`` alone on tensors made beforehand (``bare_infer_only_fps``,
``ratio_vs_infer_only``). Both run ``--repeats`` times, interleaved, and the
best run of each counts, so load from other processes is charged to neither.

The model is a small CNN (three stride-2 3x3 convolutions 3->16->32->64
channels, global pooling, a 10-way linear layer, at 224x224), so inference
costs what a light edge classifier costs. It ships as
``bench/models/bench_cnn.onnx``, so the benchmark runs in an agent-only
install (no ``onnx`` package); ``--widen N`` builds a wider one with
onnx.helper and needs the trainer extra.
"""

from __future__ import annotations

import argparse
import json
import queue
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_VIDEO = ROOT.parent / "shared" / "data" / "video" / "highway_video1.avi"
SHIPPED_MODEL = Path(__file__).resolve().parent / "models" / "bench_cnn.onnx"
LABELS = [f"class{i}" for i in range(10)]
SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video", type=Path, default=None,
                        help=f"video file (default: {SHARED_VIDEO} when present, else a generated one)")
    parser.add_argument("--frames", type=int, default=500, help="frames to run through both loops (default 500)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for both (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each; the best counts (default 3)")
    parser.add_argument("--widen", type=int, default=1,
                        help="multiply the CNN's channels (default 1: 16-32-64, shipped); 4 makes a heavier model "
                             "(built here: needs the onnx package)")


def card() -> dict:
    return {"name": "benchcnn", "version": 1, "task": "classification", "labels": LABELS,
            "input": {"width": SIZE, "height": SIZE, "mean": list(MEAN), "std": list(STD)},
            "output": {"type": "classification"}}


def build_model(path: Path, widen: int = 1) -> dict:
    """Write the bench CNN with onnx.helper (deterministic: seed 0); needs the ``onnx`` package."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        raise SystemExit("building the bench model (--widen > 1) needs the onnx package: "
                         "pip install 'edgeloop[trainer]'") from e

    from protocol.modelcard import CARD_METADATA_KEY

    rng = np.random.default_rng(0)
    inits, nodes, prev, ch = [], [], "image", 3
    for i, out in enumerate((16 * widen, 32 * widen, 64 * widen)):
        w = rng.normal(0, (2.0 / (ch * 9)) ** 0.5, (out, ch, 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(out, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], strides=[2, 2], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, ch = f"r{i}", out
    inits += [numpy_helper.from_array(rng.normal(0, 0.3, (ch, 10)).astype(np.float32), "fc"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fcb")]
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"])]
    graph = helper.make_graph(nodes, "bench_cnn",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {CARD_METADATA_KEY: json.dumps(card())})
    onnx.save(model, str(path))
    return card()


def model_file(tmp: Path, widen: int) -> Path:
    if widen == 1:
        return SHIPPED_MODEL
    path = tmp / f"bench_cnn_w{widen}.onnx"
    build_model(path, widen)
    return path


def make_video(path: Path, frames: int) -> None:
    from agent.synthetic import SyntheticCamera

    cam = SyntheticCamera(seed=0, width=320, height=240, drift_per_frame=0.002)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
    for i in range(frames):
        writer.write(cam.frame(i).image)
    writer.release()


def decode_all(video: Path, limit: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < limit:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def _decoder(video: Path, limit: int, out: queue.Queue) -> None:
    """The baseline's decoder thread: frames into a bounded queue, None at the end."""
    cap = cv2.VideoCapture(str(video))
    for _ in range(limit):
        ok, img = cap.read()
        if not ok:
            break
        out.put(img)
    cap.release()
    out.put(None)


class _Prep:
    """Resize + BGR->RGB + (x/255 - mean)/std into NCHW, every buffer allocated once."""

    def __init__(self) -> None:
        self.resized = np.empty((SIZE, SIZE, 3), np.uint8)
        self.tensor = np.empty((1, 3, SIZE, SIZE), np.float32)
        self.gain = [1.0 / (255.0 * s) for s in STD]
        self.bias = [-m / s for m, s in zip(MEAN, STD)]

    def __call__(self, img: np.ndarray) -> np.ndarray:
        cv2.resize(img, (SIZE, SIZE), dst=self.resized, interpolation=cv2.INTER_LINEAR)
        for c in range(3):  # tensor channel c is RGB; the frame is BGR
            plane = self.tensor[0, c]
            np.multiply(self.resized[:, :, 2 - c], self.gain[c], out=plane)
            plane += self.bias[c]
        return self.tensor


def bare_loop(model: Path, video: Path, n: int, threads: int) -> dict:
    """Decoder thread + reused buffers + session.run: a strong hand-written loop over the same video."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the agent runs it
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    prep = _Prep()
    sess.run(None, {"image": np.zeros((1, 3, SIZE, SIZE), np.float32)})
    frames: queue.Queue = queue.Queue(maxsize=8)
    decoder = threading.Thread(target=_decoder, args=(video, n, frames), daemon=True)
    decoder.start()
    count, t_first = 0, None
    while (img := frames.get()) is not None:
        sess.run(None, {"image": prep(img)})
        count += 1
        if t_first is None:
            t_first = time.perf_counter()
    seconds = time.perf_counter() - t_first
    decoder.join()
    # The model alone: session.run on tensors made beforehand (the first 100 frames, cycled).
    tensors = [prep(img).copy() for img in decode_all(video, min(n, 100))]
    t0 = time.perf_counter()
    for i in range(count):
        sess.run(None, {"image": tensors[i % len(tensors)]})
    infer_s = time.perf_counter() - t0
    # Counted from the first inferred frame, like the pipeline.
    return {"frames": count - 1, "seconds": seconds, "fps": (count - 1) / seconds,
            "infer_only_fps": count / infer_s}


def _receipts(broker) -> object:
    import paho.mqtt.client as mqtt

    from protocol import Receipt, decode, encode
    from protocol.topics import SAMPLES_FILTER, receipt_topic

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-collector")
    ready = threading.Event()

    def on_message(c, u, msg) -> None:
        s = decode(msg.topic, msg.payload)
        c.publish(receipt_topic(s.agent_id), encode(Receipt(stored=(s.frame_id,), at=time.time())), qos=1)

    client.on_connect = lambda c, u, f, rc, p: c.subscribe(SAMPLES_FILTER, 1)
    client.on_subscribe = lambda *a: ready.set()
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    ready.wait(10)
    return client


def pipeline_run(tmp: Path, model: Path, video: Path, n: int, threads: int, broker) -> dict:
    from agent.config import parse_config
    from agent.pipeline import Agent

    cfg = parse_config({
        "agent_id": "bench", "data_dir": str(tmp / "agent"),
        "mqtt": {"host": broker.host, "port": broker.port},
        "model": {"name": "benchcnn", "path": str(model), "providers": ["cpu"], "intra_op_threads": threads},
        "cameras": [{"id": "video", "source": str(video), "kind": "file", "on_eof": "stop"}],
        "sampling": {"strategies": [{"name": "margin", "threshold": 0.1}, {"name": "random", "rate": 0.02}],
                     "per_minute": 100000, "per_hour": 100000, "per_day": 100000, "class_share": 1.0, "seed": 0},
        "updates": {"enabled": False},
    }, tmp)
    agent = Agent(cfg, seed=0).start()
    t_first = t_inferred = None
    first = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        frames, now = agent.frames, time.perf_counter()
        if frames and t_first is None:
            t_first, first = now, frames
        # sources_done: the video ended and every picked frame is in the outbox (the encoder queue is empty).
        inferred = agent.sources_done() or (frames >= n and agent.picked.unfinished_tasks == 0)
        if inferred and t_inferred is None:
            t_inferred = now
        if inferred and agent.outbox.stats().pending == 0:  # every picked frame delivered and receipted
            break
        time.sleep(0.001)
    t_done = time.perf_counter()
    frames = agent.frames - first
    p50, p99 = agent.latency.percentiles_ms()
    stats = agent.outbox.stats()
    agent.stop()
    seconds = t_done - t_first
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds,
            "seconds_to_last_inference": t_inferred - t_first, "latency_p50_ms": p50, "latency_p99_ms": p99,
            "picked": stats.picked, "sent_and_receipted": stats.delivered, "evicted": stats.evicted,
            "pending_at_stop": stats.pending, "drops": agent.counters.snapshot()}


def run(args: argparse.Namespace) -> dict:
    from edgeloop.broker import LocalBroker

    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-agent-") as d:
        tmp = Path(d)
        model = model_file(tmp, args.widen)
        video = args.video or (SHARED_VIDEO if SHARED_VIDEO.exists() else None)
        if video is None:
            video = tmp / "generated.avi"
            make_video(video, args.frames)
        n = len(decode_all(video, args.frames))
        bare, pipes = [], []
        # Interleaved repeats, best of each: on a shared machine the slow runs measure the neighbours.
        with LocalBroker(tmp / "broker") as broker:
            collector = _receipts(broker)
            try:
                for i in range(args.repeats):
                    bare.append(bare_loop(model, video, n, args.threads))
                    pipes.append(pipeline_run(tmp / f"run{i}", model, video, n, args.threads, broker))
                bare.append(bare_loop(model, video, n, args.threads))
            finally:
                collector.loop_stop()
                collector.disconnect()
    return _summary(args, video, n, bare, pipes)


def _summary(args: argparse.Namespace, video: Path, n: int, bare: list[dict], pipes: list[dict]) -> dict:
    best_bare = max(r["fps"] for r in bare)
    best_infer = max(r["infer_only_fps"] for r in bare)
    best_pipe = max(pipes, key=lambda r: r["fps"])
    return {
        "model": f"bench CNN (3 stride-2 3x3 convs 3-{16 * args.widen}-{32 * args.widen}-{64 * args.widen}, GAP, "
                 f"10-way linear), {SIZE}x{SIZE}, built with onnx.helper",
        "video": str(video) if args.video or SHARED_VIDEO.exists() else "generated 320x240 MJPG (agent.synthetic)",
        "frames": n, "intra_op_threads": args.threads, "repeats": args.repeats,
        "picked": best_pipe["picked"], "sent_and_receipted": best_pipe["sent_and_receipted"],
        "pipeline_clock": "first inferred frame -> every frame inferred and every picked frame receipted",
        "baseline": "decoder thread + bounded queue, resize and normalize into reused buffers, session.run",
        "pipeline": best_pipe, "pipeline_fps_runs": [r["fps"] for r in pipes],
        "bare_fps_runs": [r["fps"] for r in bare],
        "bare_infer_only_fps_runs": [r["infer_only_fps"] for r in bare],
        "pipeline_fps": best_pipe["fps"], "bare_fps": best_bare, "ratio": best_pipe["fps"] / best_bare,
        "overhead_pct": (best_bare / best_pipe["fps"] - 1) * 100,
        "bare_infer_only_fps": best_infer, "ratio_vs_infer_only": best_pipe["fps"] / best_infer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.agent")
    configure(parser)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to FILE")
    args = parser.parse_args()
    text = json.dumps(run(args), indent=2, sort_keys=True)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
