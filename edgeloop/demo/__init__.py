"""`edgeloop demo`: the whole loop on one machine, with embedded defaults.

A broker (mosquitto when installed, else the embedded amqtt), the server with
its review UI, SQLite under a data folder, agents on synthetic cameras that
drift away from what the first model saw, and that first model, trained on a
few dozen synthetic frames. ``--auto-label`` lets an oracle answer the error
queue; ``--headless --rounds N --json FILE`` runs N rounds unattended.

``--task detection`` (edgeloop.demo.detection): agents on the highway videos
of ``../shared`` (or ``--source``), the server's teacher (YOLOX-Nano, or
``--teacher``) pre-labels what they sample, and the fleet's own small detector
learns from it round after round.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .layout import DemoConfig


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("./edgeloop-data"),
                        help="data folder (default ./edgeloop-data); a second run resumes from it")
    parser.add_argument("--task", choices=("classification", "detection"), default="classification",
                        help="classification (synthetic shapes, the default) or detection (vehicles on the highway "
                             "videos of ../shared/data/video, labelled by the server's teacher)")
    parser.add_argument("--agents", type=int, default=2, help="number of agent processes (default 2)")
    parser.add_argument("--source", help="a real camera, stream or video for the agents instead of the synthetic "
                                         "drifting camera (USB index, rtsp://, http://, a file or a folder)")
    parser.add_argument("--auto-label", action="store_true",
                        help="let an oracle label the error queue (synthetic cameras only); detection: accept the "
                             "teacher's pre-labels")
    parser.add_argument("--teacher", type=Path, help="detection: the server's teacher model, an ONNX detector with "
                                                      "a card (default ../shared/models/yolox-nano/yolox_nano.onnx)")
    parser.add_argument("--teacher-card", type=Path, help="detection: the teacher's card file (default: embedded, "
                                                           "beside the model, or agent/cards/yolox-nano.card.toml)")
    parser.add_argument("--initial", type=int, help="examples of the first model (default 150 synthetic frames; "
                                                     "detection: 40 frames of the first video)")
    parser.add_argument("--epochs", type=int, help="epochs per training round (default 40; detection 4, "
                                                    "each of at least 10 batches)")
    parser.add_argument("--headless", action="store_true", help="no prompt: run --rounds rounds, then stop")
    parser.add_argument("--rounds", type=int, default=2, help="rounds to run in --headless mode (default 2)")
    parser.add_argument("--json", type=Path, dest="json_out", help="write the headless summary to this file")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port of the review UI (0: a free port)")
    parser.add_argument("--broker-port", type=int, default=0, help="MQTT port (default: a free port)")
    parser.add_argument("--batch-size", type=int, default=30, help="corrections per training round (30-50)")
    parser.add_argument("--fps", type=float, default=15.0, help="frames per second of each synthetic camera")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic cameras and the training")


def run(args: argparse.Namespace) -> int:
    if not 30 <= args.batch_size <= 50:
        print("--batch-size must be between 30 and 50", file=sys.stderr)
        return 2
    if args.agents < 1:
        print("--agents must be at least 1", file=sys.stderr)
        return 2
    if (args.initial is not None and args.initial < 10) or (args.epochs is not None and args.epochs < 1):
        print("--initial must be at least 10 and --epochs at least 1", file=sys.stderr)
        return 2
    from .runner import Demo, DemoError, write_json

    cfg = DemoConfig(data=args.data, agents=args.agents, source=args.source, auto_label=args.auto_label,
                     headless=args.headless, rounds=args.rounds, json_out=args.json_out, http_port=args.port,
                     broker_port=args.broker_port, batch_size=args.batch_size, camera_fps=args.fps, seed=args.seed,
                     task=args.task, teacher=args.teacher, teacher_card=args.teacher_card,
                     initial_examples=args.initial, epochs=args.epochs)
    demo = Demo(cfg)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: demo.stop.set())
    try:
        demo.up()
        if cfg.headless:
            summary = demo.run_headless()
            if cfg.json_out:
                write_json(cfg.json_out, summary)
                print(f"summary written to {cfg.json_out}", flush=True)
        else:
            demo.run_interactive()
    except DemoError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        demo.down()
    return 0
