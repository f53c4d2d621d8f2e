"""Sign a registered model's manifest and announce it as a retained MQTT message.

The manifest carries the model card read from the file's ONNX metadata, with
its ``version`` set to the announced version (agents check that card and
manifest agree, and a rollback re-announces an old file under a new version).
The download URL sits outside the signature: the signed sha256 and size make
any mirror safe.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field

from protocol import Announcement, encode
from protocol.manifest import Cohort, Manifest, parse_manifest, sign
from protocol.modelcard import CARD_METADATA_KEY, card_from_json
from protocol.topics import announce_topic

from .registry import ModelRecord, Registry, RegistryError

log = logging.getLogger(__name__)


class PublishError(Exception):
    """A model cannot be announced (the message says why)."""


class Sender(Protocol):
    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1,
                timeout: float = 10.0) -> None: ...


class PublishConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")  # where agents reach GET /models/...
    expiry_s: int = Field(30 * 86400, ge=60, le=366 * 86400)  # a retained manifest is refused after this


def read_card(path: str | Path) -> dict:
    """The ``edgeloop.card`` JSON from an ONNX file's metadata, validated, as a plain dict."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError and others for a bad file
        raise PublishError(f"{path} is not a readable ONNX model: {e}") from e
    for entry in proto.metadata_props:
        if entry.key == CARD_METADATA_KEY:
            return card_from_json(entry.value, str(path)).model_dump(mode="json")
    raise PublishError(f"{path} has no {CARD_METADATA_KEY} metadata: agents could not run it")


def register_file(registry: Registry, path: str | Path, name: str) -> ModelRecord:
    """Register a model built outside a round (e.g. the fleet's first model) from its card.

    It gets the card's version when that is above every registered one, so a
    fleet already running "v1" is not offered a second, different v1.
    """
    card = read_card(path)
    if card["name"] != name:
        raise PublishError(f"{path}: its card names model {card['name']!r}, not {name!r}")
    from .registry import NewModel

    return registry.register(NewModel(name=name, file=Path(path), task=card["task"], labels=tuple(card["labels"]),
                                      parent_version=max(0, int(card["version"]) - 1), metrics=card["metrics"],
                                      config={"registered_from": str(path), "training": card["training"]}))


@dataclass(frozen=True)
class Published:
    record: ModelRecord
    manifest: Manifest
    data: bytes  # the signed canonical JSON
    signature: bytes
    announcement: Announcement
    topic: str


def cohort_dict(c: Cohort) -> dict:
    return {"stage": c.stage, "percent": c.percent, "agents": list(c.agents), "groups": list(c.groups)}


class Publisher:
    def __init__(self, registry: Registry, key: Ed25519PrivateKey, sender: Sender, config: PublishConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.key = key
        self.sender = sender
        self.config = config
        self.clock = clock

    def url(self, name: str, version: int) -> str:
        return f"{self.config.base_url.rstrip('/')}/models/{name}/{version}.onnx"

    def manifest(self, record: ModelRecord, cohort: Cohort) -> Manifest:
        card = read_card(record.file_path)
        if card["name"] != record.name:
            raise PublishError(f"{record.file_path}: its card names model {card['name']!r}, "
                               f"the registry {record.name!r}")
        card["version"] = record.version
        now = int(self.clock())
        return Manifest(name=record.name, version=record.version, sha256=record.sha256, size=record.size,
                        task=card["task"], labels=tuple(card["labels"]), card=card, created=now,
                        expires=now + self.config.expiry_s, cohort=cohort, parent_version=record.parent_version,
                        note=record.note)

    def announce(self, name: str, version: int, cohort: Cohort) -> Published:
        """Sign, record, then publish retained QoS 1 (recorded first so the file is servable on arrival)."""
        try:
            record = self.registry.get(name, version)
        except RegistryError as e:
            raise PublishError(str(e)) from e
        if not Path(record.file_path).is_file():
            raise PublishError(f"the file of {name} v{version} is missing: {record.file_path}")
        manifest = self.manifest(record, cohort)
        data, signature = sign(manifest, self.key)
        ann = Announcement(manifest=data, signature=signature, url=self.url(name, version))
        self.registry.record_publication(name, version, cohort.stage, cohort_dict(cohort), data, signature,
                                         ann.url, record.note)
        topic = announce_topic(name)
        self.sender.publish(topic, encode(ann), retain=True, qos=1)
        log.info("announced %s v%d to %s cohort (%s)", name, version, cohort.stage, cohort_dict(cohort))
        return Published(record, manifest, data, signature, ann, topic)

    def refresh(self, name: str) -> Published | None:
        """Re-sign the live announcement once half its validity has passed (call it daily).

        Agents that connect later would refuse an expired retained manifest;
        agents already running the version ignore the re-announcement. Only a
        model still live (fleet or published) is refreshed, never a halted one.
        """
        pubs = self.registry.publications(name)
        if not pubs:
            return None
        last = pubs[-1]
        manifest = parse_manifest(last["manifest"])
        if manifest.expires - self.clock() > self.config.expiry_s / 2:
            return None
        if self.registry.get(name, last["version"]).state not in ("fleet", "published"):
            return None
        return self.announce(name, last["version"], manifest.cohort)

    def withdraw(self, name: str) -> None:
        """Delete the retained announcement (an empty retained message), so no agent that connects later installs it."""
        self.sender.publish(announce_topic(name), b"", retain=True, qos=1)
        log.warning("withdrew the retained announcement of %s", name)
