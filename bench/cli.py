"""`edgeloop bench NAME --json FILE`: run one benchmark, print and save its figures.

A benchmark module ``bench/NAME.py`` provides ``configure(parser)`` and
``run(args) -> dict``. The dict holds the project's raw figures, the
baseline's, and ``ratio`` (project / baseline, for throughputs) or
``seconds`` (for latencies). This wrapper adds the machine it ran on.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

BENCHES = ("agent", "ingest", "train", "loop", "rollout")


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=BENCHES, help="which benchmark")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of the benchmark itself")


def run(args: argparse.Namespace) -> int:
    module_name = f"bench.{args.name}"
    if importlib.util.find_spec(module_name) is None:
        print(f"benchmark {args.name!r} is not built yet", file=sys.stderr)
        return 2
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"edgeloop bench {args.name}")
    parser.add_argument("--json", metavar="FILE", dest="json_out", default=args.json,
                        help="also write the figures to FILE")
    module.configure(parser)
    options = parser.parse_args(args.options)
    args.json = options.json_out
    started = time.time()
    result = {"bench": args.name, "started": started, **module.run(options)}
    result["wall_seconds"] = round(time.time() - started, 3)
    result["machine"] = machine()
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    return 0
