"""``edgeloop publish VERSION [--cohort staged|canary|fleet] [--percent N] [--agents a,b] [--groups g]``.

staged (the default) announces to the canaries, watches their health and
widens to the fleet or halts and rolls back, like an automatic round; canary
and fleet announce once to that cohort (a person's explicit decision, e.g.
for a candidate the gate rejected).
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli_common import CliError, add_options, load, parse_ids


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", type=int, nargs="?", help="the registered model version to publish")
    parser.add_argument("--register", metavar="FILE", help="register this ONNX file first (e.g. the fleet's first "
                        "model; its card gives name, version, labels) and publish it")
    parser.add_argument("--cohort", choices=("staged", "canary", "fleet"), default="staged",
                        help="staged: canary then fleet, watched; canary/fleet: one announcement (default staged)")
    parser.add_argument("--percent", type=int, help="canary share of the fleet, 0-100")
    parser.add_argument("--agents", metavar="A,B", help="named canary agents")
    parser.add_argument("--groups", metavar="G,H", help="canary agent groups")
    parser.add_argument("--window", type=float, metavar="S", help="seconds of healthy canaries before widening")
    add_options(parser)


def run(args: argparse.Namespace) -> int:
    from protocol import ProtocolError
    from protocol.manifest import Cohort

    from .keys import KeyError_
    from .mqttlink import MqttError
    from .publisher import PublishError, register_file
    from .registry import RegistryError
    from .service import PublishingService

    try:
        config, data_dir = load(args)
        agents, groups = parse_ids(args.agents), parse_ids(args.groups)
        overrides = {k: v for k, v in (("canary_percent", args.percent), ("canary_agents", agents or None),
                                       ("canary_groups", groups or None), ("window_s", args.window)) if v is not None}
        if overrides and args.cohort == "staged" and config.rollout.stages:
            raise ValueError("--percent, --agents, --groups and --window shape the classic canary stage, but this"
                             " config has [[publish.rollout.stages]]: change the stages there instead")
        config = config.model_copy(update={"rollout": config.rollout.model_validate(
            {**config.rollout.model_dump(), **overrides})})
        svc = PublishingService.open(config, data_dir, client_id="edgeloop-publish-cli", resume=False)
    except (CliError, KeyError_, ProtocolError, MqttError, ValueError) as e:
        print(f"edgeloop publish: {e}", file=sys.stderr)
        return 2
    try:
        name = config.model_name
        if args.register:
            args.version = register_file(svc.registry, args.register, name).version
            print(f"registered {args.register} as {name} v{args.version}")
        if args.version is None:
            print("edgeloop publish: give VERSION or --register FILE", file=sys.stderr)
            return 2
        if args.cohort == "staged":
            result = svc.controller.roll_out(name, args.version)
            print(json.dumps(result.to_dict(), indent=2))
            return 0 if result.outcome == "fleet" else 1
        cohort = Cohort("fleet") if args.cohort == "fleet" else Cohort(
            "canary", config.rollout.canary_percent, agents, groups)
        p = svc.controller.publish(name, args.version, cohort)
        print(f"announced {name} v{args.version} to {args.cohort} at {p.announcement.url}")
        return 0
    except (RegistryError, PublishError, MqttError) as e:
        print(f"edgeloop publish: {e}", file=sys.stderr)
        return 1
    finally:
        svc.close()
