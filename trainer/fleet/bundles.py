"""Versioned configuration bundles per agent group: validate, sign, keep, publish, roll back.

``push`` validates the settings with the agent's own strict models
(agent.bundles.check_settings: a bad key or value is refused with its path,
before anything is signed or stored), signs the bundle with the model-signing
key (``[publish] signing_key``), stores it unpublished, publishes it retained
on ``edgeloop/v1/groups/{group}/config`` and waits for the broker's PUBACK;
only then is it marked published. When the server is not connected nothing
is sent and the row is deleted (the version is free: no agent can have it).
When the publish was sent but not acknowledged in time, the broker may still
deliver it (after a reconnect, say), so the row is kept unpublished (state
unknown: not listed, not a rollback target) and its version is never used
again: the next push is a higher version, which every agent accepts whether
or not the lost one reached it.

``rollback`` re-publishes an earlier version's settings as a NEW, higher
version (note "rollback to vN"), as model rollbacks do: agents refuse any
version not above the one they run, so a replay can never downgrade them.

Threads: called from HTTP workers; one lock serializes pushes so versions
are dense and increasing; waits on the store's writer and the PUBACK.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from agent.bundles import BundleInvalid, check_settings
from protocol import ConfigBundle, ProtocolError, encode
from protocol.bundle import Bundle, sign_bundle
from protocol.topics import config_topic
from trainer.publish.mqttlink import NotSent

from . import records
from .errors import FleetError

log = logging.getLogger(__name__)


class BundleError(FleetError):
    """A push or rollback that cannot happen."""


class Bundles:
    def __init__(self, store, publish: Callable[[str, bytes], None], key=None, key_problem: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._publish = publish  # (topic, payload), retained; waits for the PUBACK, raises on failure
        self.key = key  # Ed25519PrivateKey, None: bundles cannot be signed here
        self.key_problem = key_problem or "no signing key: configure [publish] signing_key"
        self.clock = clock
        self._lock = threading.Lock()

    def push(self, group: str, settings: dict, user: str, note: str = "", parent_version: int = 0) -> dict:
        if self.key is None:
            raise BundleError(404, f"configuration bundles are off on this server: {self.key_problem}")
        try:
            check_settings(settings)
        except BundleInvalid as e:
            raise BundleError(422, f"invalid settings: {e}") from e
        with self._lock:
            version = records.next_bundle_version(self.store.db.read(), group)
            now = self.clock()
            bundle = Bundle(group=group, version=version, settings=settings, created=int(now),
                            parent_version=parent_version, note=note[:512], author=user[:64])
            try:
                data, signature = sign_bundle(bundle, self.key)
                payload = encode(ConfigBundle(data, signature))
            except ProtocolError as e:  # e.g. over the 64 KiB a bundle may hold
                raise BundleError(422, f"cannot make a bundle of these settings: {e.detail}") from e
            self.store.db.write(lambda db: records.insert_bundle(db, group, version, settings, data, signature, now,
                                                                 user, note[:512], parent_version))
            try:
                self._publish(config_topic(group), payload)
            except NotSent as e:  # nothing left this server: undo the row, nothing half-applied
                self.store.db.write(lambda db: records.set_published(db, group, version, None))
                raise BundleError(503, f"the broker did not take the bundle, nothing changed: {e}") from e
            except Exception as e:  # perhaps delivered: keep the row (unknown) so v{version} is never reused
                log.error("configuration bundle %s v%d was not acknowledged; kept as unknown: %s", group, version, e)
                raise BundleError(503, f"the broker did not acknowledge bundle v{version} in time; agents may still "
                                       f"receive it, and the next push will be v{version + 1}: {e}") from e
            self.store.db.write(lambda db: records.set_published(db, group, version, self.clock()))
        log.warning("%s published configuration bundle %s v%d%s", user, group, version, f" ({note})" if note else "")
        return self.versions(group, 1)[0]

    def rollback(self, group: str, user: str, to: int | None = None) -> dict:
        versions = self.versions(group)
        if not versions:
            raise BundleError(404, f"group {group!r} has no configuration bundle")
        if to is None:
            if len(versions) < 2:
                raise BundleError(409, f"group {group!r} has only v{versions[0]['version']}: nothing to roll back to")
            target = versions[1]
        else:
            target = next((v for v in versions if v["version"] == to), None)
            if target is None:
                raise BundleError(404, f"group {group!r} has no bundle v{to}")
            if target["version"] == versions[0]["version"]:
                raise BundleError(409, f"v{to} is the current bundle of {group!r}")
        return self.push(group, target["settings"], user, note=f"rollback to v{target['version']}",
                         parent_version=target["version"])

    def versions(self, group: str, limit: int = 100) -> list[dict]:
        return records.bundles(self.store.db.read(), group, limit)
