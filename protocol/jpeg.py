"""Cheap JPEG checks: magic bytes and the frame size from the SOF marker.

Reading the size from the marker segments costs microseconds and no decode,
so the collector can reject a JPEG whose declared size lies before it
reaches Pillow or OpenCV.
"""

from __future__ import annotations

from .errors import ProtocolError

SOI = b"\xff\xd8\xff"
# Start-of-frame markers that carry the image size (not DHT C4, JPG C8, DAC CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Return (width, height) of a baseline or progressive JPEG, or raise ProtocolError."""
    if not data.startswith(SOI):
        raise ProtocolError("not_jpeg", "image does not start with the JPEG SOI marker")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ProtocolError("bad_jpeg", f"expected a marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker == 0xD9 or marker == 0xDA:  # EOI or scan data before any SOF
            break
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        if seg_len < 2:
            raise ProtocolError("bad_jpeg", f"segment length {seg_len} at byte {i}")
        if marker in _SOF:
            if i + 9 > n:
                break
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        i += 2 + seg_len
    raise ProtocolError("bad_jpeg", "no start-of-frame marker found")
