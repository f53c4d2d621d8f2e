"""``edgeloop rollback [--to VERSION]``: re-announce an earlier model to the whole fleet.

The earlier file goes out under a NEW, higher version (note "rollback to N"),
so agents' downgrade protection keeps refusing anything older than what they
run. Without ``--to``, the fleet model before the current one is chosen.
"""

from __future__ import annotations

import argparse
import sys

from .cli_common import CliError, add_options, load


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", type=int, metavar="VERSION", help="the version to go back to")
    add_options(parser)


def run(args: argparse.Namespace) -> int:
    from protocol import ProtocolError

    from .keys import KeyError_
    from .mqttlink import MqttError
    from .publisher import PublishError
    from .registry import RegistryError
    from .service import PublishingService

    try:
        config, data_dir = load(args)
        svc = PublishingService.open(config, data_dir, client_id="edgeloop-rollback-cli", resume=False)
    except (CliError, KeyError_, ProtocolError, MqttError, ValueError) as e:
        print(f"edgeloop rollback: {e}", file=sys.stderr)
        return 2
    try:
        p = svc.controller.rollback(config.model_name, args.to)
        print(f"announced {config.model_name} v{p.record.version} ({p.record.note}) to the fleet")
        return 0
    except (RegistryError, PublishError, MqttError) as e:
        print(f"edgeloop rollback: {e}", file=sys.stderr)
        return 1
    finally:
        svc.close()
