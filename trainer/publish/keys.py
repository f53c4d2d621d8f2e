"""The server's Ed25519 model-signing key on disk.

``DIR/signing_key.pem`` (PKCS#8, mode 0600, never leaves the server) and
``DIR/signing_key.pub.pem``; agents trust the public key, as PEM or as the
base64 of its 32 raw bytes (``protocol.manifest.load_public_key`` takes both).
"""

from __future__ import annotations

import base64
import logging
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.files import atomic_write
from protocol.manifest import generate_keypair, load_private_key, load_public_key

log = logging.getLogger(__name__)
PRIVATE_NAME = "signing_key.pem"
PUBLIC_NAME = "signing_key.pub.pem"


class KeyError_(Exception):
    """A key file is missing, unreadable, too open, or would be overwritten."""


@dataclass(frozen=True)
class KeyFiles:
    private: Path
    public: Path
    public_b64: str  # the raw form for an agent's TOML config


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Created with ``mode`` before any byte is written, so a secret is never world-readable, even briefly."""
    atomic_write(path, data, mode)


def public_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def generate(out_dir: str | Path, force: bool = False) -> KeyFiles:
    out = Path(out_dir)
    private, public = out / PRIVATE_NAME, out / PUBLIC_NAME
    if not force and (private.exists() or public.exists()):
        raise KeyError_(f"{private} already exists: agents trust its public key; pass --force to replace it "
                        "(see 'key rotation' in docs/publishing.md)")
    priv_pem, pub_pem = generate_keypair()
    write_atomic(private, priv_pem, 0o600)
    write_atomic(public, pub_pem, 0o644)
    return KeyFiles(private, public, public_b64(load_public_key(pub_pem)))


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """Load the private key, refusing a file that group or others can read."""
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as e:
        raise KeyError_(f"cannot read signing key {path}: {e}") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyError_(f"signing key {path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
    return load_private_key(data)
