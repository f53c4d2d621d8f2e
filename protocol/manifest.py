"""Signed model manifests: canonical JSON, Ed25519, cohorts.

The server signs the canonical JSON bytes of a manifest; agents verify the
signature over the exact bytes they received, then parse them. A manifest
promises the model file's sha256 and size, so the download URL can be
anything.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ProtocolError
from .fields import Fields
from .signed import canonical_json, check_signature, json_object
from .topics import ID_RE

SHA256_HEX = 64
STAGES = ("canary", "fleet")


@dataclass(frozen=True)
class Cohort:
    """Who should install: named agents, agents in named groups, a stable share of the fleet, or all."""

    stage: str = "fleet"  # fleet = every agent
    percent: int = 0
    agents: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def includes(self, model_name: str, agent_id: str, agent_groups: tuple[str, ...] = ()) -> bool:
        if self.stage == "fleet" or agent_id in self.agents or set(self.groups) & set(agent_groups):
            return True
        return bucket(model_name, agent_id) < self.percent


def bucket(model_name: str, agent_id: str) -> int:
    """A stable 0..99 bucket per (model, agent), so the same agents are canaries every round."""
    digest = hashlib.sha256(f"{model_name}\0{agent_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    sha256: str
    size: int
    task: str
    labels: tuple[str, ...]
    card: dict  # the model card (protocol.modelcard) as a plain dict
    created: int
    expires: int
    cohort: Cohort = field(default_factory=Cohort)
    parent_version: int = 0
    note: str = ""  # e.g. "rollback to 3"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["cohort"] = {**asdict(self.cohort), "agents": list(self.cohort.agents), "groups": list(self.cohort.groups)}
        return d


def parse_manifest(data: bytes) -> Manifest:
    """Structure only: does not check the signature (see verify)."""
    f = Fields("manifest", json_object(data, "bad_manifest", "manifest"))
    sha = f.text("sha256", SHA256_HEX)
    if len(sha) != SHA256_HEX or any(c not in "0123456789abcdef" for c in sha):
        raise ProtocolError("bad_manifest", "manifest.sha256 must be 64 lowercase hex digits")
    c = Fields("manifest.cohort", f.mapping("cohort", 8))
    cohort = Cohort(stage=c.text("stage", choices=STAGES), percent=c.integer("percent", 0, 100),
                    agents=c.text_list("agents", 10000, pattern=ID_RE), groups=c.text_list("groups", 256, pattern=ID_RE))
    return Manifest(
        name=f.text("name", pattern=ID_RE), version=f.integer("version", 1, 2**31), sha256=sha,
        size=f.integer("size", 1, 2**40), task=f.text("task", choices=("classification", "detection")),
        labels=f.text_list("labels", 1000), card=f.mapping("card", 64), created=f.integer("created", 0, 2**33),
        expires=f.integer("expires", 0, 2**33), cohort=cohort, parent_version=f.integer("parent_version", 0, 2**31, 0),
        note=f.text("note", 512, default="", prose=True),
    )


def sign(manifest: Manifest, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """Return (manifest bytes, 64-byte signature)."""
    data = canonical_json(manifest.to_dict())
    parse_manifest(data)  # never sign something agents will refuse
    return data, key.sign(data)


def verify(data: bytes, signature: bytes, keys: list[Ed25519PublicKey], now: float | None = None) -> Manifest:
    """Check the signature against any trusted key, then the expiry; return the manifest."""
    check_signature(data, signature, keys, "manifest")
    manifest = parse_manifest(data)
    now = time.time() if now is None else now
    if manifest.expires <= now:
        raise ProtocolError("expired", f"manifest for {manifest.name} v{manifest.version} expired at {manifest.expires}")
    return manifest


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- keys ------------------------------------------------------------------

def generate_keypair() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a new Ed25519 key."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return private, public_pem(key.public_key())


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ProtocolError("bad_key", f"not a PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ProtocolError("bad_key", "signing key must be Ed25519")
    return key


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """A PEM public key, or the 32 raw key bytes in base64 (handy in a TOML config)."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(raw)
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(raw.strip(), validate=True))
    except (ValueError, TypeError) as e:
        raise ProtocolError("bad_key", f"not an Ed25519 public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ProtocolError("bad_key", "trusted key must be Ed25519")
    return key
