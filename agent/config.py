"""The agent's configuration: one TOML file, validated at start-up.

Every model forbids unknown keys, so a typo fails with the key's path instead
of being silently ignored. Secrets never live in the file: the MQTT password
comes from the environment variable named by ``mqtt.password_env``.
Relative paths are resolved against the directory of the config file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from protocol.errors import ProtocolError
from protocol.manifest import load_public_key
from protocol.topics import ID_PATTERN, ID_RE

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "password", "secret", "xxx"}


class ConfigError(ValueError):
    """A config that cannot be used; ``problems`` is a list of 'path: message' lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_id(v: str) -> str:
    if not ID_RE.match(v):
        raise ValueError(f"must match {ID_PATTERN}")
    return v


class MqttConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = None  # default: "edgeloop-agent-<agent_id>"
    username: str | None = None
    password_env: str = "EDGELOOP_MQTT_PASSWORD"
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False  # skip hostname check: lab use only
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_min_s: float = Field(0.5, gt=0, le=60)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)


class UplinkConfig(_Strict):
    receipt_timeout_s: float = Field(30.0, gt=0, le=86400)  # resend when no receipt came back in time
    max_inflight: int = Field(32, ge=1, le=10000)  # samples published and waiting for a receipt
    telemetry_period_s: float = Field(10.0, gt=0, le=3600)


class SyntheticConfig(_Strict):
    seed: int = 0
    width: int = Field(320, ge=16, le=4096)
    height: int = Field(240, ge=16, le=4096)
    fps: float = Field(0.0, ge=0, le=1000)  # 0: as fast as the consumer takes frames
    frames: int = Field(0, ge=0)  # 0: endless
    drift_per_frame: float = Field(0.0, ge=0, le=1)  # how fast backgrounds and shapes change style
    max_shapes: int = Field(3, ge=1, le=8)  # shapes per scene; the largest is the classification label


class CameraConfig(_Strict):
    id: str
    source: str  # URL, file, folder, USB index ("0" or "usb:0") or "synthetic"
    kind: Literal["auto", "rtsp", "http", "usb", "file", "folder", "synthetic"] = "auto"
    on_eof: Literal["stop", "loop"] = "stop"
    open_timeout_s: float = Field(10.0, gt=0, le=600)
    read_timeout_s: float = Field(5.0, gt=0, le=600)
    reconnect_min_s: float = Field(0.5, gt=0, le=600)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    max_fps: float = Field(0.0, ge=0, le=1000)  # 0: no limit
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v)


class ModelConfig(_Strict):
    name: str  # model name in announcements; must match the card
    path: Path  # the initial model; updates live under data_dir/models
    card: Path | None = None  # card file, else ONNX metadata, else <model>.card.json/.toml
    providers: list[Literal["tensorrt", "cuda", "cpu"]] = ["tensorrt", "cuda", "cpu"]
    intra_op_threads: int = Field(0, ge=0, le=256)  # 0: onnxruntime decides
    inter_op_threads: int = Field(0, ge=0, le=256)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_id(v)


class LeastConfidence(_Strict):
    name: Literal["least_confidence"]
    threshold: float = Field(0.5, ge=0, le=1)  # pick when 1 - top1 >= threshold


class Margin(_Strict):
    name: Literal["margin"]
    threshold: float = Field(0.1, ge=0, le=1)  # pick when top1 - top2 <= threshold


class Entropy(_Strict):
    name: Literal["entropy"]
    threshold: float = Field(0.6, ge=0, le=1)  # pick when normalized entropy >= threshold


class ThresholdBand(_Strict):
    name: Literal["threshold_band"]
    low: float = Field(0.3, ge=0, le=1)
    high: float = Field(0.6, ge=0, le=1)


class BandCount(_Strict):
    name: Literal["band_count"]
    low: float = Field(0.3, ge=0, le=1)
    high: float = Field(0.6, ge=0, le=1)
    min_count: int = Field(3, ge=1)


class Flicker(_Strict):
    name: Literal["flicker"]
    min_score: float = Field(0.5, ge=0, le=1)  # a box counts as present from this score
    iou: float = Field(0.5, gt=0, le=1)  # a box matches one of the previous frame from this IoU
    min_changes: int = Field(1, ge=1)


class RandomAudit(_Strict):
    name: Literal["random"]
    rate: float = Field(0.01, ge=0, le=1)  # share of frames picked regardless of confidence


StrategyConfig = Annotated[
    Union[LeastConfidence, Margin, Entropy, ThresholdBand, BandCount, Flicker, RandomAudit],
    Field(discriminator="name")]


class SamplingConfig(_Strict):
    strategies: list[StrategyConfig] = [LeastConfidence(name="least_confidence")]
    classes: list[str] = []  # class filter: only frames predicting one of these (empty: all)
    per_minute: int = Field(10, ge=0)  # per camera
    per_hour: int = Field(200, ge=0)
    per_day: int = Field(2000, ge=0)
    class_share: float = Field(0.5, gt=0, le=1)  # most of the hourly budget one class may take
    dedup_hamming: int = Field(6, ge=0, le=64)  # dHash distance under which a frame is a near-duplicate; 0: off
    dedup_window: int = Field(256, ge=1, le=100000)  # picked hashes remembered per camera
    seed: int | None = None  # random audit seed (None: from the OS)


class OutboxConfig(_Strict):
    max_bytes: int = Field(256 * 1024 * 1024, ge=256 * 1024)  # the SQLite files on disk never exceed this
    queue_size: int = Field(64, ge=1, le=100000)  # picked frames waiting for JPEG encoding
    jpeg_quality: int = Field(90, ge=10, le=100)


class HealthConfig(_Strict):
    """The health window after each model install (agent.health)."""

    enabled: bool = True  # off: a model that loads and warms up is trusted at once
    window_s: float = Field(10.0, ge=0, le=86400)  # shortest probation, in seconds
    min_frames: int = Field(30, ge=1, le=10_000_000)  # fewest frames the new model must infer to pass
    max_error_rate: float = Field(0.01, ge=0, le=1)  # inference errors per frame
    max_nonfinite_rate: float = Field(0.0, ge=0, le=1)  # frames with NaN/inf outputs per frame; 0: any fails
    max_confidence_drop: float = Field(1.0, ge=0, le=1)  # vs the previous model's mean confidence; 1: off


class UpdatesConfig(_Strict):
    enabled: bool = True
    trusted_keys: list[str] = []  # Ed25519 public keys: base64 of the 32 raw bytes, or PEM
    trusted_key_files: list[Path] = []
    max_download_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    download_timeout_s: float = Field(60.0, gt=0, le=3600)  # the longest wait for the next byte
    download_deadline_s: float = Field(900.0, gt=0, le=86400)  # the whole download, connect to last byte
    allow_http: bool = False  # plain http only for a lab; the signature still protects the content
    health: HealthConfig = HealthConfig()

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for i, key in enumerate(v):
            try:
                load_public_key(key)
            except ProtocolError as e:
                raise ValueError(f"trusted_keys[{i}]: {e.detail}") from e
        return v


class AgentConfig(_Strict):
    agent_id: str
    groups: list[str] = []  # cohort groups for staged model roll-outs
    tags: dict[str, str] = {}  # site, camera type...: reported in the Status for people and group choices
    config_group: str | None = None  # whose configuration bundles to follow (None: the first of groups)
    data_dir: Path  # outbox, model versions, state file
    mqtt: MqttConfig = MqttConfig()
    uplink: UplinkConfig = UplinkConfig()
    model: ModelConfig
    cameras: list[CameraConfig] = Field(min_length=1, max_length=64)
    sampling: SamplingConfig = SamplingConfig()
    outbox: OutboxConfig = OutboxConfig()
    updates: UpdatesConfig = UpdatesConfig()

    @field_validator("agent_id")
    @classmethod
    def _agent(cls, v: str) -> str:
        return _check_id(v)

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        return [_check_id(g) for g in v]

    @field_validator("config_group")
    @classmethod
    def _config_group(cls, v: str | None) -> str | None:
        return None if v is None else _check_id(v)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 32:
            raise ValueError("at most 32 tags")
        for key, value in v.items():
            _check_id(key)
            if len(value) > 128:
                raise ValueError(f"tag {key}: at most 128 characters")
        return v

    @property
    def bundle_group(self) -> str | None:
        """The group whose configuration bundles this agent applies, or None."""
        return self.config_group or (self.groups[0] if self.groups else None)

    @model_validator(mode="after")
    def _unique_cameras(self) -> "AgentConfig":
        ids = [c.id for c in self.cameras]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"cameras: duplicate id {', '.join(dupes)}")
        return self


def _format_errors(e: ValidationError) -> list[str]:
    out = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        out.append(f"{where}: {err['msg']}")
    return out


def _resolve(path: Path | None, base: Path) -> Path | None:
    if path is None:
        return None
    path = Path(os.path.expanduser(path))
    return path if path.is_absolute() else base / path


def parse_config(data: dict, base_dir: Path, source: str = "config") -> AgentConfig:
    """Validate a config dict; relative paths become relative to ``base_dir``."""
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, _format_errors(e)) from e
    m, u, q = cfg.model, cfg.updates, cfg.mqtt
    return cfg.model_copy(update={
        "data_dir": _resolve(cfg.data_dir, base_dir),
        "model": m.model_copy(update={"path": _resolve(m.path, base_dir), "card": _resolve(m.card, base_dir)}),
        "updates": u.model_copy(update={"trusted_key_files": [_resolve(p, base_dir) for p in u.trusted_key_files]}),
        "mqtt": q.model_copy(update={k: _resolve(getattr(q, k), base_dir)
                                     for k in ("ca_file", "cert_file", "key_file")}),
    })


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML config file, or raise ConfigError naming the bad keys."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror or e}"]) from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), [f"not valid TOML: {e}"]) from e
    cfg = parse_config(data, path.resolve().parent, str(path))
    problems = check_files(cfg)
    if problems:
        raise ConfigError(str(path), problems)
    return cfg


def check_files(cfg: AgentConfig) -> list[str]:
    """Checks that need the file system or the environment, after the schema passed."""
    problems = []
    for i, key_file in enumerate(cfg.updates.trusted_key_files):
        try:
            load_public_key(key_file.read_bytes())
        except (OSError, ProtocolError) as e:
            problems.append(f"updates.trusted_key_files.{i}: {e}")
    for key in ("ca_file", "cert_file", "key_file"):
        p = getattr(cfg.mqtt, key)
        if p is not None and not p.is_file():
            problems.append(f"mqtt.{key}: no such file {p}")
    if cfg.mqtt.username is not None:
        secret = os.environ.get(cfg.mqtt.password_env)
        if secret is not None and secret.strip().lower() in PLACEHOLDER_SECRETS:
            problems.append(f"mqtt.password_env: ${cfg.mqtt.password_env} holds a placeholder, set a real secret")
    return problems


def mqtt_password(cfg: MqttConfig) -> str | None:
    return os.environ.get(cfg.password_env)


def trusted_keys(cfg: UpdatesConfig) -> list:
    keys = [load_public_key(k) for k in cfg.trusted_keys]
    keys += [load_public_key(p.read_bytes()) for p in cfg.trusted_key_files]
    return keys
