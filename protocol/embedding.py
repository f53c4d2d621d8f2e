"""Compact image embeddings on the wire: int8, one byte per dimension.

A model whose card names an ``embedding_output`` gives pooled penultimate
features with each prediction. A Sample carries them quantized so the server
can compare frames without decoding images: the vector is L2-normalized, so
every component lies in [-1, 1], and ``round(v * 127)`` fits an int8 with a
worst-case error of 1/254 per component (cosine similarity changes by well
under 0.01 at the dimensions used here). The bytes are the int8 values in
order; the dimension is the byte count. Dequantizing re-normalizes, so the
dot product of two dequantized vectors is their cosine similarity. Pure
functions, no threads.
"""

from __future__ import annotations

import numpy as np

from .errors import ProtocolError

MAX_EMBEDDING_DIM = 1024
QUANT_SCALE = 127.0


def l2_normalize(vec: np.ndarray) -> np.ndarray:
    """Flattened float32 copy of ``vec`` with unit L2 norm (a zero vector stays zero)."""
    v = np.asarray(vec, dtype=np.float32).reshape(-1)
    if not np.isfinite(v).all():
        raise ProtocolError("bad_field", "embedding holds NaN or inf")
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v.copy()


def quantize_embedding(vec: np.ndarray) -> bytes:
    """L2-normalize, scale by 127, round and clip to int8: the ``Sample.embedding`` bytes."""
    v = l2_normalize(vec)
    if not 0 < v.size <= MAX_EMBEDDING_DIM:
        raise ProtocolError("bad_field", f"embedding has {v.size} dimensions, expected 1 to {MAX_EMBEDDING_DIM}")
    return np.clip(np.rint(v * QUANT_SCALE), -127, 127).astype(np.int8).tobytes()


def dequantize_embedding(b: bytes) -> np.ndarray:
    """``Sample.embedding`` bytes -> float32 vector of unit norm (re-normalized after the rounding).

    So the dot product of two dequantized vectors is their cosine similarity.
    """
    if not 0 < len(b) <= MAX_EMBEDDING_DIM:
        raise ProtocolError("bad_field", f"embedding has {len(b)} bytes, expected 1 to {MAX_EMBEDDING_DIM}")
    v = np.frombuffer(b, dtype=np.int8).astype(np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v
