"""The server's configuration: pydantic models (unknown keys are errors) loaded from TOML."""

from __future__ import annotations

import argparse

import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Literal

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib  # type: ignore[no-redef]

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from protocol.files import atomic_write_text
from trainer.assist.config import AssistConfig
from trainer.publish.service import PublishingConfig
from trainer.store.labels import label_problem
from trainer.store.ranking import QueueConfig
from trainer.rounds.pipeline import RoundsConfig
from trainer.roles.config import RolesConfig
from trainer.store.retention import RetentionConfig

TOKEN_ENV = "EDGELOOP_SERVER_TOKEN"
MQTT_PASSWORD_ENV = "EDGELOOP_MQTT_PASSWORD"
PLACEHOLDERS = {"", "changeme", "change-me", "change_me", "secret", "token", "password", "<token>", "xxx",
                "replace-me", "todo"}
MIN_TOKEN_LEN = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    # None: edgeloop-<host name>-<suffix kept in the data dir> (resolve_client_id), so two servers on one broker
    # never share a persistent session and a restart resumes its own. Set it to choose the id yourself.
    client_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    # MQTT 5 shared subscription group: several collectors with the same group
    # split the sample load. None = a plain subscription.
    shared_group: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    username: str | None = None
    password: SecretStr | None = None  # or $EDGELOOP_MQTT_PASSWORD
    # TLS to the broker (deploy/: the server listener on 8884), as the agent's [mqtt] does: the broker's
    # certificate is checked against ca_file (default: the system's CAs); cert_file/key_file are optional.
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False  # skip the host name check (the chain is still verified): lab use only
    keepalive_s: int = Field(30, ge=5, le=3600)
    session_expiry_s: int = Field(7 * 86400, ge=0, le=2**32 - 1)
    batch_max: int = Field(200, ge=1, le=1024)
    batch_ms: float = Field(50.0, ge=1.0, le=5000.0)
    receipt_qos: int = Field(1, ge=0, le=2)
    # Payload bytes received but not yet committed; past it the network thread waits (TCP backpressure).
    max_inflight_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024, le=16 * 1024**3)

    @model_validator(mode="after")
    def _tls_files(self) -> "MqttConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mqtt.cert_file and mqtt.key_file go together")
        if not self.tls and (self.ca_file or self.cert_file or self.tls_insecure):
            raise ValueError("mqtt.ca_file, cert_file and tls_insecure need mqtt.tls = true")
        return self

    def secure(self, client) -> None:
        """Credentials and TLS on a paho client before it connects (trainer/publish/mqttlink.py)."""
        from trainer.publish.mqttlink import secure

        secure(client, tls=self.tls, username=self.username,
               password=self.password.get_secret_value() if self.password else None, ca_file=self.ca_file,
               cert_file=self.cert_file, key_file=self.key_file, tls_insecure=self.tls_insecure)


class HttpConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: SecretStr | None = None  # or $EDGELOOP_SERVER_TOKEN; generated when neither is set
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=1024**3)
    login_max_failures: int = Field(5, ge=1, le=1000)
    login_window_s: float = Field(60.0, gt=0, le=86400)
    session_ttl_s: float = Field(12 * 3600, gt=0, le=30 * 86400)
    cookie_secure: bool = False  # set true behind HTTPS
    metrics_public: bool = False  # /metrics without auth (for a scraper on a private network)
    # /docs (Swagger UI) loads its script and styles from cdn.jsdelivr.net, so it is off unless wanted;
    # /openapi.json (behind login) works either way.
    api_docs: bool = False


class StoreConfig(_Strict):
    data_dir: Path = Path("./edgeloop-data")
    busy_timeout_ms: int = Field(10_000, ge=100, le=600_000)
    # sqlite:///path/edgeloop.db or postgresql://user@host:5432/db (trainer/store/backends.py); empty: SQLite in
    # data_dir. The password belongs in the URL only via $EDGELOOP_STORE_URL (it wins over this key).
    url: str = Field("", max_length=2048)
    pool_size: int = Field(8, ge=1, le=256)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("store.url must start with sqlite:/// or postgresql://")
        return v

    def store_url(self) -> str:
        """The URL the store opens: $EDGELOOP_STORE_URL, else ``url``, else SQLite in ``data_dir``."""
        return os.environ.get("EDGELOOP_STORE_URL") or self.url or f"sqlite:///{self.data_dir / 'edgeloop.db'}"


class ProjectConfig(_Strict):
    name: str = Field("default", min_length=1, max_length=128)
    task: Literal["classification", "detection"] | None = None
    labels: tuple[str, ...] = ()
    batch_size: int = Field(40, ge=30, le=50)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        for x in v:  # the one rule for label names (trainer/store/labels.py): possible in every export format
            problem = label_problem(x)
            if problem:
                raise ValueError(f"{problem}: {x!r:.80}")
        return v


class ServerConfig(_Strict):
    mqtt: MqttConfig = MqttConfig()
    http: HttpConfig = HttpConfig()
    store: StoreConfig = StoreConfig()
    project: ProjectConfig = ProjectConfig()
    import_root: Path | None = None  # POST /api/import reads only below this directory
    # Training rounds (trigger, worker, gate) and publishing (signing, announcing, staged rollout).
    # Without [rounds] the server only collects and serves the review UI; without [publish] a
    # round's model is registered and gated but never announced.
    rounds: RoundsConfig | None = None
    publish: PublishingConfig | None = None
    # A teacher model that pre-labels unlabelled items (trainer/assist); without it reviewers start from
    # the edge model's prediction only.
    assist: AssistConfig | None = None
    # Which parts run in this process (trainer/roles): by default all of them, as one embedded server.
    roles: RolesConfig = RolesConfig()
    # What the store may forget, and the hard limit above which new samples are refused (trainer/store/retention.py).
    retention: RetentionConfig = RetentionConfig()
    # The review queue's cold start: typical items first while the model is weak (trainer/store/ranking.py).
    queue: QueueConfig = QueueConfig()

    @model_validator(mode="after")
    def _same_model(self) -> "ServerConfig":
        if self.rounds and self.publish and self.rounds.model_name != self.publish.model_name:
            raise ValueError(f"rounds.model_name {self.rounds.model_name!r} and publish.model_name "
                             f"{self.publish.model_name!r} must name the same model")
        return self


class ConfigError(ValueError):
    """A config file that cannot be used; the message names each bad key."""


def format_errors(err: ValidationError) -> str:
    return "\n".join(f"  {'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors())


def load_config(path: Path | None) -> ServerConfig:
    if path is None:
        return ServerConfig()
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from e
    try:
        return ServerConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: invalid configuration\n{format_errors(e)}") from e


def resolve_token(config: ServerConfig, env: dict[str, str] | None = None) -> tuple[str, bool]:
    """The API token and whether it was generated; refuses placeholders."""
    env = os.environ if env is None else env
    token = env.get(TOKEN_ENV) or (config.http.token.get_secret_value() if config.http.token else None)
    if token is None:
        return secrets.token_urlsafe(24), True
    if token.strip().lower() in PLACEHOLDERS or len(token) < MIN_TOKEN_LEN:
        raise ConfigError(f"http.token (or ${TOKEN_ENV}) is a placeholder or shorter than {MIN_TOKEN_LEN} "
                          "characters; set a real secret")
    return token, False


def broker_address(text: str) -> tuple[str, int]:
    """``--broker HOST:PORT`` as argparse's ``type``: a bad value names the option, not ``int()``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port from 1 to 65535, got {text!r}")
    return host, int(port)


CLIENT_ID_FILE = "mqtt_client_id"  # in store.data_dir: this server's client id suffix


def _client_id_suffix(path: Path) -> str:
    """The data dir's suffix, made once: processes starting together (collectors, workers) agree on it."""
    valid = re.compile(r"[a-f0-9]{8}")
    for _ in range(50):
        try:
            suffix = path.read_text().strip()
        except FileNotFoundError:
            suffix = None
        if suffix is not None and valid.fullmatch(suffix):
            return suffix
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = secrets.token_hex(4)
        if suffix:  # something else is in the file: replace it whole
            atomic_write_text(path, fresh + "\n")
            return fresh
        try:  # only one process creates it; the others read what it wrote
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            time.sleep(0.02)  # its creator is writing it
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(fresh + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return fresh
    raise RuntimeError(f"{path} stays empty; delete it or set [mqtt] client_id")


def resolve_client_id(config: "ServerConfig") -> "ServerConfig":
    """``config`` with ``[mqtt] client_id`` filled in when it was left out.

    The default is ``edgeloop-<host name>-<suffix>``; the suffix is random, made once and kept in
    ``store.data_dir/mqtt_client_id``, so the id is stable across restarts of this server (the broker
    resumes its persistent session and hands over what it queued) and different for another server
    (another data dir) on the same broker. Processes sharing one data dir on one host (several
    collectors) must be given their own ids (``--client-id``). An explicit ``client_id`` always wins.
    """
    if config.mqtt.client_id is not None:
        return config
    suffix = _client_id_suffix(Path(config.store.data_dir) / CLIENT_ID_FILE)
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:32] or "host"
    mqtt = config.mqtt.model_copy(update={"client_id": f"edgeloop-{host}-{suffix}"})
    return config.model_copy(update={"mqtt": mqtt})
