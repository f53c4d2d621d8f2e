"""The binary envelope every edgeloop payload travels in.

    offset  size  field
    0       2     magic b"EL"
    2       1     major version (the topic's v{major})
    3       1     minor version (additive changes only)
    4       1     kind code (see KIND_CODES)
    5       1     flags, must be 0 in v1
    6       4     header length H, unsigned big-endian, at most MAX_HEADER
    10      H     header: one msgpack map of the message's fields
    10+H    rest  body: raw bytes (the JPEG of a sample; empty otherwise)

Why this shape: MQTT 3.1.1 has no user properties, so metadata has to travel
inside the payload; a fixed prefix plus msgpack keeps the JPEG as raw bytes
(no base64: +33% and a copy), lets a receiver reject a payload from its first
ten bytes, and msgpack decoding is bounded by the limits passed to it.
"""

from __future__ import annotations

import struct

import msgpack

from .errors import ProtocolError
from .topics import PROTOCOL_MAJOR

MAGIC = b"EL"
MINOR = 4  # 1: optional sample.embedding, status.provider, telemetry.provider
# 2: optional status.tags/answered/config_group/config_version; the config kind on groups/{group}/config
# 3: optional command.expires_at (agents refuse an expired command)
# 4: optional telemetry.camera_hist (per-camera confidence histograms, for drift per camera)
PREFIX = struct.Struct(">2sBBBBI")
MAX_HEADER = 256 * 1024
MAX_PAYLOAD = 16 * 1024 * 1024

KIND_CODES = {
    "sample": 1,
    "receipt": 2,
    "status": 3,
    "telemetry": 4,
    "command": 5,
    "announcement": 6,
    "config": 7,
}
KIND_BY_CODE = {code: kind for kind, code in KIND_CODES.items()}

# Limits handed to msgpack so a hostile header cannot make it allocate more
# than the header's own (already bounded) size suggests.
_UNPACK_LIMITS = dict(
    max_str_len=64 * 1024,
    max_bin_len=MAX_HEADER,
    max_array_len=8192,
    max_map_len=4096,
    max_ext_len=0,
)


def pack(kind: str, header: dict, body: bytes = b"") -> bytes:
    raw = msgpack.packb(header, use_bin_type=True)
    if len(raw) > MAX_HEADER:
        raise ProtocolError("header_too_large", f"{len(raw)} bytes > {MAX_HEADER}")
    total = PREFIX.size + len(raw) + len(body)
    if total > MAX_PAYLOAD:
        raise ProtocolError("payload_too_large", f"{total} bytes > {MAX_PAYLOAD}")
    prefix = PREFIX.pack(MAGIC, PROTOCOL_MAJOR, MINOR, KIND_CODES[kind], 0, len(raw))
    return b"".join((prefix, raw, body))


def unpack(payload: object) -> tuple[str, dict, bytes]:
    """Split a payload into (kind, header, body); every check before any copy."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError("bad_payload", f"payload must be bytes, got {type(payload).__name__}")
    view = memoryview(payload)
    if len(view) > MAX_PAYLOAD:
        raise ProtocolError("payload_too_large", f"{len(view)} bytes > {MAX_PAYLOAD}")
    if len(view) < PREFIX.size:
        raise ProtocolError("truncated", f"{len(view)} bytes is shorter than the {PREFIX.size}-byte prefix")
    magic, major, _minor, code, flags, hlen = PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise ProtocolError("bad_magic", "payload does not start with b'EL'")
    if major != PROTOCOL_MAJOR:
        # A newer major may change anything: refuse rather than guess.
        raise ProtocolError("unsupported_version", f"envelope major {major}, this side speaks {PROTOCOL_MAJOR}")
    kind = KIND_BY_CODE.get(code)
    if kind is None:
        raise ProtocolError("unknown_kind", f"kind code {code}")
    if flags != 0:
        raise ProtocolError("bad_flags", f"flags {flags:#x} must be 0 in v{PROTOCOL_MAJOR}")
    if hlen > MAX_HEADER:
        raise ProtocolError("header_too_large", f"declared {hlen} bytes > {MAX_HEADER}")
    end = PREFIX.size + hlen
    if end > len(view):
        raise ProtocolError("truncated", f"header declares {hlen} bytes, only {len(view) - PREFIX.size} present")
    try:
        header = msgpack.unpackb(view[PREFIX.size:end], raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except Exception as e:  # msgpack raises a zoo of types for bad input
        raise ProtocolError("bad_header", f"header is not valid msgpack: {type(e).__name__}") from e
    if not isinstance(header, dict):
        raise ProtocolError("bad_header", "header must be a msgpack map")
    return kind, header, bytes(view[end:])
