"""``edgeloop collector`` and ``edgeloop worker``: one role of the central side per process.

    edgeloop collector --config server.toml   # MQTT ingest only (several: same [mqtt] shared_group)
    edgeloop worker --config server.toml      # round jobs only (several: each claims its own)
    edgeloop collector --check-config server.toml

Both read the server's TOML (the same file on every machine, with a distinct
``[mqtt] client_id`` per process) and override what the role is not: no HTTP,
and ``[roles]`` set for the role. A collector also runs the storage meter and,
unless ``[roles] retention = false``, the retention pass. A worker needs
``[rounds]`` (and ``[publish]`` to roll out what passes the gate). Stopping a
worker (SIGTERM) cancels the round it trains; killing it releases the round to
another worker once ``[roles] worker_lease_s`` has passed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from trainer.server.config import ConfigError, ServerConfig, broker_address, load_config

log = logging.getLogger(__name__)
ROLES = ("collector", "worker")


class RoleError(ValueError):
    """A configuration this role cannot run with."""


def configure(parser: argparse.ArgumentParser, role: str) -> None:
    parser.description = {"collector": "MQTT ingest only: samples, statuses and telemetry into the store",
                           "worker": "train round jobs from the store (claim, heartbeat, register, gate)"}[role]
    parser.add_argument("--config", type=Path, help="the server's TOML file")
    parser.add_argument("--check-config", type=Path, metavar="FILE", help="validate FILE for this role and exit")
    parser.add_argument("--data-dir", type=Path, help="override store.data_dir (the image cache; SQLite's folder)")
    parser.add_argument("--broker", metavar="HOST:PORT", type=broker_address, help="override mqtt.host and mqtt.port")
    parser.add_argument("--client-id", help="override mqtt.client_id (unique per process: the broker keeps its "
                                            "session, and a second client with the same id cuts the first off)")
    if role == "worker":
        parser.add_argument("--worker-id", help="override roles.worker_id")


def for_role(config: ServerConfig, role: str, args: argparse.Namespace | None = None) -> ServerConfig:
    """``config`` as the role runs it (raises RoleError when it cannot)."""
    store, mqtt, roles = config.store, config.mqtt, config.roles
    if args is not None and getattr(args, "data_dir", None):
        store = store.model_copy(update={"data_dir": args.data_dir})
    if args is not None and getattr(args, "broker", None):
        host, port = args.broker
        mqtt = mqtt.model_copy(update={"host": host, "port": port})
    if args is not None and getattr(args, "client_id", None):
        mqtt = type(mqtt).model_validate({**mqtt.model_dump(), "password": mqtt.password, "client_id": args.client_id})
    if role == "collector":
        if not mqtt.enabled:
            raise RoleError("a collector needs [mqtt] enabled = true")
        roles = roles.model_copy(update={"collector": True, "worker": False})
        update = {"rounds": None, "publish": None, "assist": None}
    elif role == "worker":
        if config.rounds is None:
            raise RoleError("a worker needs a [rounds] table")
        worker_id = getattr(args, "worker_id", None) if args is not None else None
        if worker_id:
            roles = type(roles).model_validate({**roles.model_dump(), "worker_id": worker_id})
        roles = roles.model_copy(update={"collector": False, "worker": True, "retention": False})
        update = {"assist": None}
    else:
        raise RoleError(f"unknown role {role!r}")
    http = config.http.model_copy(update={"enabled": False})
    return config.model_copy(update={"store": store, "mqtt": mqtt, "roles": roles, "http": http, **update})


def run(args: argparse.Namespace, role: str) -> int:
    try:
        if args.check_config:
            for_role(load_config(args.check_config), role)
            print(f"{args.check_config}: ok for edgeloop {role}")
            return 0
        config = for_role(load_config(args.config), role, args)
    except (ConfigError, RoleError, ValueError) as e:
        print(e, file=sys.stderr)
        return 1 if args.check_config else 2
    from trainer.server.service import run_until_signal
    from trainer.store.backends import redact

    return run_until_signal(config, f"edgeloop {role}: store {redact(config.store.store_url())}, "
                                    f"broker {config.mqtt.host}:{config.mqtt.port}")
