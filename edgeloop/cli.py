"""The ``edgeloop`` command: a thin dispatcher to each subsystem's CLI module.

Subcommand modules are imported only when their command runs, so
``edgeloop agent`` on an edge device never imports torch or fastapi. Each
module provides ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from edgeloop import __version__

# name -> (module, extra it needs, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "agent": ("agent.cli", "agent", "run the edge agent: camera -> ONNX -> sampling -> MQTT uplink"),
    "server": ("trainer.server.cli", "trainer", "run the collector, the error queue and the review UI"),
    "collector": ("trainer.roles.collector_cli", "trainer", "MQTT ingest only (several share the topics)"),
    "worker": ("trainer.roles.worker_cli", "trainer", "train round jobs claimed from the store (any number)"),
    "dataset": ("trainer.data.cli", "trainer", "import or export a dataset (ImageFolder, COCO, YOLO, VOC)"),
    "train": ("trainer.train.cli", "trainer", "train a round on a dataset and export ONNX"),
    "augment-preview": ("trainer.train.preview_cli", "trainer", "write a PNG grid of augmented examples"),
    "keys": ("trainer.publish.keys_cli", "trainer", "generate the Ed25519 model-signing key pair"),
    "publish": ("trainer.publish.publish_cli", "trainer", "sign and announce a model version to a cohort"),
    "rollback": ("trainer.publish.rollback_cli", "trainer", "re-announce an earlier model under a new version"),
    "agents": ("trainer.fleet.cli", "trainer", "send commands to agents; push or roll back group configuration bundles"),
    "users": ("trainer.server.users_cli", "trainer", "accounts and roles: add, list, disable, set-role, rotate-token"),
    "assist": ("trainer.assist.cli", "trainer", "import unlabelled images; pre-label them with a teacher model"),
    "replay": ("trainer.replay.cli", "trainer", "measure active-learning strategies on a labelled dataset"),
    "demo": ("edgeloop.demo", "trainer", "run the whole loop locally with embedded defaults"),
    "bench": ("bench.cli", "trainer", "run a benchmark and write its figures as JSON"),
    "store": ("trainer.store.cli", "trainer", "move the store between SQLite and PostgreSQL (migrate), count its rows"),
}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop", description="Edge active learning: pick what the model is unsure about, relabel, retrain.")
    parser.add_argument("--version", action="version", version=f"edgeloop {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, _extra, help_) in COMMANDS.items():
        built = _available(module)
        sub.add_parser(name, help=help_ if built else f"{help_} (not built yet)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Only the top-level options are parsed here; the rest belongs to the subcommand.
    top, rest = parser.parse_known_args(argv)
    if top.command is None:
        parser.print_help()
        return 0 if not argv else 2
    logging.basicConfig(level=top.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module_name, extra, help_ = COMMANDS[top.command]
    if not _available(module_name) and not _available(module_name.split(".")[0]):
        print(f"edgeloop {top.command} needs the '{extra}' extra: pip install 'edgeloop[{extra}]'", file=sys.stderr)
        return 2
    if not _available(module_name):
        print(f"edgeloop {top.command} is not built yet", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        print(f"edgeloop {top.command} needs the '{extra}' extra ({e.name} is missing): "
              f"pip install 'edgeloop[{extra}]'", file=sys.stderr)
        return 2
    sub = argparse.ArgumentParser(prog=f"edgeloop {top.command}", description=help_)
    module.configure(sub)
    args = sub.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
