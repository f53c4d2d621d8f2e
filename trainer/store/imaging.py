"""Image facts the store keeps: size, media type and a perceptual hash."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .blobs import sniff_ext


class BadImage(ValueError):
    """Bytes that are not a decodable JPEG or PNG."""


@dataclass(frozen=True)
class ImageInfo:
    ext: str
    width: int
    height: int
    phash: int  # signed 64-bit dHash, as SQLite stores integers


def dhash(gray: np.ndarray) -> int:
    """64-bit difference hash: robust to re-encoding and small resizes."""
    small = cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= (1 << 63) else value


def inspect_image(data: bytes) -> ImageInfo:
    """Decode once to check the bytes and compute the hash; raise BadImage otherwise."""
    ext = sniff_ext(data)
    if ext is None:
        raise BadImage("not a JPEG or PNG")
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise BadImage(f"{ext} does not decode")
    height, width = img.shape[:2]
    gray = img if img.ndim == 2 else cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2GRAY)
    if gray.dtype != np.uint8:
        gray = (gray / 256).astype(np.uint8)
    return ImageInfo(ext, int(width), int(height), dhash(gray))


def hash_image(data: bytes) -> int:
    """The dHash of JPEG or PNG bytes, decoded at 1/8 scale (all a 9x8 hash needs); BadImage if it fails."""
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if gray is None or gray.size == 0:
        raise BadImage("image does not decode")
    return dhash(gray)
