"""``edgeloop assist``: unlabelled images in, the teacher over the backlog, offline.

    edgeloop assist import photos/ --config server.toml     # unlabelled images -> review queue
    edgeloop assist run --config server.toml [--retry-failed] [--force]
    edgeloop assist status --config server.toml

``run`` loads the ``[assist]`` teacher of the server config and pre-labels every unlabelled item it
has not done yet, then prints the counts; with the server running, ``POST /api/assist/run`` does
the same inside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="server TOML (its store.data_dir and [assist])")
    common.add_argument("--data-dir", type=Path, help="override store.data_dir")
    sub = parser.add_subparsers(dest="action", required=True)
    imp = sub.add_parser("import", parents=[common], help="add a folder of unlabelled images to the review queue")
    imp.add_argument("folder", type=Path)
    run = sub.add_parser("run", parents=[common], help="pre-label the unlabelled items with the [assist] teacher")
    run.add_argument("--retry-failed", action="store_true", help="run again on items the teacher failed on")
    run.add_argument("--force", action="store_true", help="pre-label every unlabelled item again")
    run.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    sub.add_parser("status", parents=[common], help="the teacher's counts as JSON")


def run(args: argparse.Namespace) -> int:
    from trainer.server.config import ConfigError, load_config
    from trainer.store import Store, StoreError

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    data_dir = args.data_dir or config.store.data_dir
    if args.action != "import" and config.assist is None:
        print("the server config has no [assist] section (see trainer/server/README.md)", file=sys.stderr)
        return 2
    with Store(data_dir) as store:
        try:
            if args.action == "import":
                return _import(store, args.folder)
            return _teacher(store, config.assist, args)
        except StoreError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1


def _import(store, folder: Path) -> int:
    from trainer.data.common import FormatError, ReadReport

    from .unlabelled import import_unlabelled

    report = ReadReport()
    try:
        added = import_unlabelled(store, folder, report)
    except FormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{folder}: {report.summary()}; {added} new unlabelled items in {store.data_dir}")
    for path, reason in report.skipped[:20]:
        print(f"  skipped {path}: {reason}")
    return 0


def _teacher(store, cfg, args: argparse.Namespace) -> int:
    from .worker import Assist

    assist = Assist(store, cfg.model_copy(update={"auto": False, "enabled": True})).start()
    try:
        if assist.teacher is None:
            print(f"error: {assist.error}", file=sys.stderr)
            return 1
        if args.action == "run":
            waiting = assist.request_run(retry_failed=args.retry_failed, force=args.force)
            print(f"teacher {assist.teacher.name} v{assist.teacher.version}: {waiting} items to pre-label", flush=True)
            if not assist.wait_idle(args.timeout):
                print(f"error: not done after {args.timeout:.0f} s", file=sys.stderr)
                return 1
        status = assist.status()
        print(json.dumps({k: status[k] for k in ("state", "counts", "processed", "mean_seconds")}))
        return 0
    finally:
        assist.stop()
