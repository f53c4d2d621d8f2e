"""``edgeloop server``: the collector, the error queue API and the review UI in one process.

    edgeloop server                       # embedded defaults: ./edgeloop-data, broker 127.0.0.1:1883
    edgeloop server --config server.toml
    edgeloop server --check-config server.toml   # validate, name each bad key, exit 1 if any

With ``[http] enabled = false`` it runs as a collector only (several can
share the load with ``[mqtt] shared_group``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import (MQTT_PASSWORD_ENV, TOKEN_ENV, ConfigError, ServerConfig, broker_address, load_config,
                     resolve_token)

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.epilog = (f"The API token comes from http.token or ${TOKEN_ENV}; without either a random one is "
                     f"generated and printed. The broker password comes from mqtt.password or ${MQTT_PASSWORD_ENV}. "
                     "Log in at http://HOST:PORT/login with the token, or send 'Authorization: Bearer TOKEN'. "
                     "API reference: http://HOST:PORT/docs.")
    parser.add_argument("--config", type=Path, help="TOML file (sections mqtt, http, store, project)")
    parser.add_argument("--check-config", type=Path, metavar="FILE", help="validate FILE and exit")
    parser.add_argument("--data-dir", type=Path, help="override store.data_dir")
    parser.add_argument("--host", help="override http.host")
    parser.add_argument("--port", type=int, help="override http.port")
    parser.add_argument("--broker", metavar="HOST:PORT", type=broker_address, help="override mqtt.host and mqtt.port")


def _overrides(config: ServerConfig, args: argparse.Namespace) -> ServerConfig:
    raw = config.model_dump()
    if args.data_dir:
        raw["store"]["data_dir"] = args.data_dir
    if args.host:
        raw["http"]["host"] = args.host
    if args.port is not None:
        raw["http"]["port"] = args.port
    if args.broker:
        raw["mqtt"]["host"], raw["mqtt"]["port"] = args.broker
    for section in ("http", "mqtt"):  # SecretStr dumps masked: keep the originals
        for key in ("token", "password"):
            if key in raw[section]:
                raw[section][key] = getattr(getattr(config, section), key)
    if os.environ.get(MQTT_PASSWORD_ENV):  # secrets come from the environment (deploy/systemd/server.env)
        raw["mqtt"]["password"] = os.environ[MQTT_PASSWORD_ENV]
    return ServerConfig.model_validate(raw)


def run(args: argparse.Namespace) -> int:
    if args.check_config:
        try:
            config = load_config(args.check_config)
            resolve_token(config)
            _check_teacher(config)
        except ConfigError as e:
            print(e, file=sys.stderr)
            return 1
        print(f"{args.check_config}: ok")
        return 0
    try:
        config = _overrides(load_config(args.config), args)
        token, generated = resolve_token(config)
    except (ConfigError, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    if not config.http.enabled:
        return _collector_only(config)
    return _serve(config, token, generated)


def _check_teacher(config: ServerConfig) -> None:
    """Load the [assist] teacher as the server would, so a deploy script sees a bad model before a restart."""
    if not (config.assist and config.assist.enabled):
        return
    from trainer.assist.teacher import Teacher, TeacherError

    try:
        Teacher.load(config.assist, config.project.task, config.project.labels)
    except TeacherError as e:
        raise ConfigError(f"{e}") from e


def _serve(config: ServerConfig, token: str, generated: bool) -> int:
    import uvicorn

    from .app import create_app

    app = create_app(config, token)
    url = f"http://{config.http.host}:{config.http.port}/"
    print(f"edgeloop server: {url}  (API docs: {url}docs)", flush=True)
    if generated:
        print(f"  generated token for this run: {token}\n  log in at {url}login or send "
              f"'Authorization: Bearer {token}'", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=config.http.host, port=config.http.port,
                                           log_level="info", access_log=False, proxy_headers=False))
    server.run()
    return 0


def _collector_only(config: ServerConfig) -> int:
    from .service import run_until_signal

    return run_until_signal(config, f"edgeloop collector: store {config.store.data_dir}, "
                                    f"broker {config.mqtt.host}:{config.mqtt.port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.server")
    configure(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))
