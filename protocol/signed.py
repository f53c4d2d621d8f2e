"""What signed JSON documents (model manifests, config bundles) share: canonical bytes, parsing, the signature.

The signer signs ``canonical_json`` bytes; the receiver checks the signature over the exact bytes it
got (``check_signature``), then parses them (``json_object``) before any field is read. Pure
functions: no threads, nothing to wait on.
"""

from __future__ import annotations

import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import ProtocolError


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no spaces, ASCII: one byte string per value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def json_object(data: bytes, reason: str, what: str) -> dict:
    """The JSON object ``data`` holds; ProtocolError(``reason``) when it is not JSON or not an object."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(reason, f"not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ProtocolError(reason, f"{what} must be a JSON object")
    return obj


def check_signature(data: bytes, signature: bytes, keys: list[Ed25519PublicKey], what: str) -> None:
    """Pass when any trusted key signed ``data``; ProtocolError("bad_signature") otherwise."""
    for key in keys:
        try:
            key.verify(signature, data)
            return
        except InvalidSignature:
            continue
    raise ProtocolError("bad_signature", f"{what} signature does not match any trusted key")
