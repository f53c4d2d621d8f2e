"""``edgeloop agent``: run the edge agent, or check its config file."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger("agent")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run the edge agent: cameras -> ONNX model -> uncertainty sampling -> on-disk outbox -> "
                          "MQTT uplink, with signed model updates. See agent/README.md for every config key.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", type=Path, metavar="FILE",
                      help="agent config (TOML); validated at start-up, unknown keys are errors")
    what.add_argument("--check-config", type=Path, metavar="FILE",
                      help="validate FILE (schema, key files, secrets) and load its model once, then exit: "
                           "0 when usable, 1 with one 'key.path: problem' line per error")
    parser.add_argument("--exit-when-done", action="store_true",
                        help="exit once every camera reached end of file (on_eof = 'stop') and the outbox is "
                             "empty, or --drain-timeout passed; for batch runs over recorded video")
    parser.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="with --exit-when-done: the longest wait for receipts after the last frame "
                             "(default 30)")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="seed the random audit, the sampler and reconnect jitter (reproducible runs)")


def check_config(path: Path) -> int:
    from .config import ConfigError, load_config
    from .model import ModelError, ModelRunner

    try:
        cfg = load_config(path)
    except ConfigError as e:
        for problem in e.problems:
            print(f"{e.source}: {problem}", file=sys.stderr)
        return 1
    try:
        runner = ModelRunner.load(cfg.model.path, ["cpu"], card_file=cfg.model.card)
    except ModelError as e:
        print(f"{path}: model.path: {e}", file=sys.stderr)
        return 1
    if runner.name != cfg.model.name:
        print(f"{path}: model.name: {cfg.model.name!r} but the model's card says {runner.name!r}", file=sys.stderr)
        return 1
    print(f"{path}: OK (agent {cfg.agent_id}, {len(cfg.cameras)} camera(s), model {runner.name} v{runner.version}, "
          f"{runner.card.task}, {len(runner.card.labels)} labels)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.check_config is not None:
        return check_config(args.check_config)
    from .config import ConfigError, load_config
    from .pipeline import Agent

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        for problem in e.problems:
            print(f"{e.source}: {problem}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent = Agent(cfg, config_path=args.config, seed=args.seed).start()
    try:
        agent.run(stop, exit_when_done=args.exit_when_done, drain_timeout_s=args.drain_timeout)
    finally:
        agent.stop()
    stats = agent.outbox.stats()
    log.info("frames %d, picked %d, delivered %d, evicted %d, pending %d", agent.frames, stats.picked,
             stats.delivered, stats.evicted, stats.pending)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgeloop agent")
    configure(parser)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
