"""Signed configuration bundles: canonical JSON, Ed25519, one version sequence per agent group.

A bundle says which settings an agent group runs with (``settings``: a map
of agent config sections; agent.bundles validates it with the agent's own
strict models). The server signs the canonical JSON bytes with the same key
as model manifests (protocol.manifest); agents verify the signature over
the exact bytes they received before parsing anything, and refuse a
version not above the one they applied, so a replayed older bundle changes
nothing. A rollback is a new, higher version carrying older settings.

No expiry, unlike manifests: the retained bundle must keep applying to an
agent that restarts months later; the version order already stops replays.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ProtocolError
from .fields import Fields
from .messages import MAX_BUNDLE
from .signed import canonical_json, check_signature, json_object
from .topics import ID_RE


@dataclass(frozen=True)
class Bundle:
    group: str
    version: int  # per group, strictly increasing
    settings: dict  # agent config sections that can change live (agent.bundles.BundleSettings)
    created: int
    parent_version: int = 0  # for a rollback: the version whose settings were copied
    note: str = ""
    author: str = ""  # who pushed it, for people

    def to_dict(self) -> dict:
        return {"group": self.group, "version": self.version, "settings": self.settings, "created": self.created,
                "parent_version": self.parent_version, "note": self.note, "author": self.author}


def parse_bundle(data: bytes) -> Bundle:
    """Structure only: does not check the signature (see verify_bundle) nor the settings' meaning."""
    if len(data) > MAX_BUNDLE:
        raise ProtocolError("bad_bundle", f"bundle of {len(data)} bytes > {MAX_BUNDLE}")
    f = Fields("bundle", json_object(data, "bad_bundle", "a bundle"))
    return Bundle(group=f.text("group", pattern=ID_RE), version=f.integer("version", 1, 2**31),
                  settings=f.mapping("settings", 32), created=f.integer("created", 0, 2**33),
                  parent_version=f.integer("parent_version", 0, 2**31, 0), note=f.text("note", 512, default="", prose=True),
                  author=f.text("author", 64, default=""))


def sign_bundle(bundle: Bundle, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """(canonical bundle bytes, 64-byte signature)."""
    data = canonical_json(bundle.to_dict())
    parse_bundle(data)  # never sign what agents will refuse
    return data, key.sign(data)


def verify_bundle(data: bytes, signature: bytes, keys: list[Ed25519PublicKey]) -> Bundle:
    """Check the signature against any trusted key, then the structure; ProtocolError names the reason."""
    if not signature:
        raise ProtocolError("unsigned", "the bundle carries no signature")
    if not keys:
        raise ProtocolError("no_trusted_keys", "this agent trusts no signing key (updates.trusted_keys)")
    check_signature(data, signature, keys, "bundle")
    return parse_bundle(data)

