"""Options shared by ``edgeloop publish`` and ``edgeloop rollback``.

Settings come from the server's TOML file (``--config``: its ``[publish]``
table is a ``PublishingConfig``, its ``store.data_dir`` the data folder),
then from flags, which win.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from pydantic import ValidationError

from .service import PublishingConfig


class CliError(Exception):
    pass


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="server TOML with a [publish] table")
    parser.add_argument("--data-dir", type=Path, help="the server's data folder (holds registry.db)")
    parser.add_argument("--name", help="model name (default: publish.model_name or 'model')")
    parser.add_argument("--key", type=Path, help="signing_key.pem (publish.signing_key)")
    parser.add_argument("--base-url", help="URL agents download from, e.g. http://server:8080 (publish.base_url)")
    parser.add_argument("--mqtt-host", help="broker host (publish.mqtt_host)")
    parser.add_argument("--mqtt-port", type=int, help="broker port (publish.mqtt_port)")


def load(args: argparse.Namespace) -> tuple[PublishingConfig, Path]:
    raw: dict = {}
    data_dir = None
    if args.config is not None:
        try:
            doc = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise CliError(f"{args.config}: {e}") from e
        raw = dict(doc.get("publish", {}))
        data_dir = doc.get("store", {}).get("data_dir")
    for flag, key in (("key", "signing_key"), ("base_url", "base_url"), ("mqtt_host", "mqtt_host"),
                      ("mqtt_port", "mqtt_port"), ("name", "model_name")):
        value = getattr(args, flag)
        if value is not None:
            raw[key] = str(value) if isinstance(value, Path) else value
    data_dir = args.data_dir or data_dir
    if data_dir is None:
        raise CliError("give --data-dir or a --config whose store.data_dir names the server's data folder")
    try:
        return PublishingConfig.model_validate(raw), Path(data_dir)
    except ValidationError as e:
        bad = "; ".join(f"publish.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise CliError(f"bad publishing settings: {bad}") from e


def parse_ids(text: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").split(",") if x.strip())
