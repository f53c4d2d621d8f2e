"""Central configuration bundles on the agent: verify, validate, apply live, keep, report.

The server publishes one signed bundle per agent group, retained on
``edgeloop/v1/groups/{group}/config`` (protocol.bundle). An agent follows one
group (``config_group``, else the first of ``groups``). A bundle is applied
only when, in this order: it carries a signature that a trusted key
(``updates.trusted_keys``, the model-signing key) verifies over the exact
bytes received; it names this agent's group; its version is above the one
applied; and its settings pass the agent's own strict config models
(``check_settings``). Otherwise it is refused with the reason in the Status
``detail`` and the previous settings stay.

What can change live (``LIVE``): the ``[sampling]`` section except its seed
(strategies, thresholds, class filter, per-minute/hour/day quotas, class
share, near-duplicate settings) and ``uplink.telemetry_period_s`` /
``uplink.receipt_timeout_s``. The effective config is the agent's file with
the bundle's keys laid over it; ``reload_config`` lays the same bundle over
the re-read file. A new sampling section restarts the per-camera budgets.

The applied bundle is kept in ``data_dir/config-bundle.json`` (bytes and
signature, written atomically) and verified again at start-up, so an agent
that starts without a broker runs its last bundle, and a replayed older
version is refused after a restart too.

Threads: ``receive`` runs on the uplink's MQTT thread, ``load_saved`` at
start-up, ``rebase`` on the MQTT thread (reload_config). One lock guards the
state; the only wait is the small fsynced file write.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ValidationError

from protocol import ConfigBundle, ProtocolError
from protocol.bundle import Bundle, verify_bundle
from protocol.files import atomic_write

from .config import AgentConfig, SamplingConfig, UplinkConfig

log = logging.getLogger(__name__)
FILE_NAME = "config-bundle.json"

# section -> (its strict model, the keys a bundle may set)
LIVE: dict[str, tuple[type[BaseModel], tuple[str, ...]]] = {
    "sampling": (SamplingConfig, ("strategies", "classes", "per_minute", "per_hour", "per_day", "class_share",
                                  "dedup_hamming", "dedup_window")),
    "uplink": (UplinkConfig, ("telemetry_period_s", "receipt_timeout_s")),
}


class BundleInvalid(ValueError):
    """Settings a bundle may not carry; ``problems`` are 'path: message' lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _section(model: type[BaseModel], base: BaseModel, name: str, values: object, keys: tuple[str, ...],
             problems: list[str]) -> BaseModel | None:
    if not isinstance(values, dict):
        problems.append(f"{name}: must be a table of settings")
        return None
    bad = sorted(k for k in values if k not in keys)
    for k in bad:
        known = k in model.model_fields
        problems.append(f"{name}.{k}: " + ("cannot change live (it needs a new config file and a restart)"
                                           if known else "unknown key"))
    if bad:
        return None
    try:
        return model.model_validate({**base.model_dump(), **values})
    except ValidationError as e:
        problems += [f"{name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        return None


def merge(cfg: AgentConfig, settings: object) -> AgentConfig:
    """``cfg`` with a bundle's settings laid over it, validated by the agent's models; BundleInvalid if not."""
    if not isinstance(settings, dict):
        raise BundleInvalid(["settings: must be a table of sections"])
    problems: list[str] = []
    update = {}
    for name, values in settings.items():
        if name not in LIVE:
            problems.append(f"{name}: not a section that can change live (only {', '.join(LIVE)})")
            continue
        model, keys = LIVE[name]
        section = _section(model, getattr(cfg, name), name, values, keys, problems)
        if section is not None:
            update[name] = section
    if problems:
        raise BundleInvalid(problems)
    return cfg.model_copy(update=update)


def check_settings(settings: object) -> None:
    """Validate settings on their own (the server does, before it signs): BundleInvalid names each problem."""
    if not isinstance(settings, dict):
        raise BundleInvalid(["settings: must be a table of sections"])
    problems: list[str] = []
    for name, values in settings.items():
        if name not in LIVE:
            problems.append(f"{name}: not a section that can change live (only {', '.join(LIVE)})")
            continue
        model, keys = LIVE[name]
        _section(model, model(), name, values, keys, problems)
    if problems:
        raise BundleInvalid(problems)


class BundleKeeper:
    """The bundle this agent runs: receives, checks, applies through ``on_apply``, persists, reports."""

    def __init__(self, file_cfg: AgentConfig, keys: list, on_apply: Callable[[AgentConfig], None]) -> None:
        self.file_cfg = file_cfg
        self.group = file_cfg.bundle_group
        self.keys = keys
        self.on_apply = on_apply
        self.path = Path(file_cfg.data_dir) / FILE_NAME
        self.version = 0
        self.detail = ""  # the last refusal or failure, for the Status
        self._bundle: Bundle | None = None
        self._raw: tuple[bytes, bytes] | None = None
        self._lock = threading.Lock()

    def load_saved(self) -> None:
        """Apply the bundle kept on disk, verified again (a tampered file is refused, not trusted)."""
        if self.group is None or not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_text())
            msg = ConfigBundle(base64.b64decode(doc["bundle"]), base64.b64decode(doc["signature"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._refuse(0, f"the saved bundle {self.path} is unreadable: {e}")
            return
        self.receive(msg, persist=False)

    def receive(self, msg: ConfigBundle, persist: bool = True) -> bool:
        """Check and apply one bundle; True when it now runs."""
        with self._lock:
            try:
                bundle = verify_bundle(msg.bundle, msg.signature, self.keys)
            except ProtocolError as e:
                return self._refuse(0, f"{e.reason}: {e.detail}")
            if bundle.group != self.group:
                return self._refuse(bundle.version, f"wrong_group: signed for {bundle.group!r}, this agent "
                                                    f"follows {self.group!r}")
            if bundle.version == self.version and self._raw == (msg.bundle, msg.signature):
                return False  # the retained copy again, after a reconnect
            if bundle.version <= self.version:
                return self._refuse(bundle.version, f"not_newer: v{self.version} is applied")
            try:
                effective = merge(self.file_cfg, bundle.settings)
            except BundleInvalid as e:
                return self._refuse(bundle.version, f"invalid: {e}")
            if persist:
                try:
                    self._save(msg)
                except OSError as e:
                    return self._refuse(bundle.version, f"cannot keep it on disk: {e}")
            self.on_apply(effective)
            self._bundle, self._raw, self.version = bundle, (msg.bundle, msg.signature), bundle.version
            self.detail = ""
            log.info("config bundle %s v%d applied%s", bundle.group, bundle.version,
                     f" ({bundle.note})" if bundle.note else "")
            return True

    def rebase(self, file_cfg: AgentConfig) -> AgentConfig:
        """A re-read config file with the applied bundle laid over it (reload_config)."""
        with self._lock:
            self.file_cfg = file_cfg
            if self._bundle is None:
                return file_cfg
            try:
                return merge(file_cfg, self._bundle.settings)
            except BundleInvalid as e:  # the file changed under the bundle: the file wins, say so
                self.detail = f"config bundle v{self.version} no longer fits the config file: {e}"[:500]
                return file_cfg

    def _refuse(self, version: int, why: str) -> bool:
        what = f"config bundle v{version}" if version else "config bundle"
        self.detail = f"{what} refused: {why}"[:500]
        log.error("%s", self.detail)
        return False

    def _save(self, msg: ConfigBundle) -> None:
        doc = {"bundle": base64.b64encode(msg.bundle).decode(), "signature": base64.b64encode(msg.signature).decode()}
        atomic_write(self.path, json.dumps(doc).encode())
