"""Quantized embeddings and the minor-1 optional fields (sample.embedding, status/telemetry provider)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

import factories as fx
from protocol import ProtocolError, decode, encode, topic_for
from protocol import envelope
from protocol.embedding import MAX_EMBEDDING_DIM, dequantize_embedding, quantize_embedding


def _topic(msg):
    return topic_for(msg, agent_id="cam-agent-1", model_name="shapes")


def test_quantize_round_trip_keeps_direction():
    rng = np.random.default_rng(0)
    v = rng.normal(size=128).astype(np.float32) * 37.0  # any scale: it is normalized first
    b = quantize_embedding(v)
    assert isinstance(b, bytes) and len(b) == 128
    back = dequantize_embedding(b)
    assert back.dtype == np.float32 and back.shape == (128,)
    unit = v / np.linalg.norm(v)
    assert np.abs(back - unit).max() <= 1 / 127
    assert abs(float(np.linalg.norm(back)) - 1) < 1e-6 and float(back @ unit) > 0.999


def test_quantize_accepts_pooled_shapes_and_clips():
    v = np.zeros((1, 4, 1, 1), np.float32)
    v[0, 2] = -5.0
    assert list(np.frombuffer(quantize_embedding(v), np.int8)) == [0, 0, -127, 0]
    assert quantize_embedding(np.zeros(3)) == bytes(3)  # a zero vector stays zero, no division by 0


@pytest.mark.parametrize("bad", [np.array([1.0, np.nan]), np.zeros(0), np.ones(MAX_EMBEDDING_DIM + 1)])
def test_quantize_refuses_bad_vectors(bad):
    with pytest.raises(ProtocolError):
        quantize_embedding(bad)


def test_dequantize_refuses_bad_lengths():
    for b in (b"", bytes(MAX_EMBEDDING_DIM + 1)):
        with pytest.raises(ProtocolError):
            dequantize_embedding(b)


def test_sample_with_embedding_round_trips():
    emb = quantize_embedding(np.arange(1, 17, dtype=np.float32))
    msg = fx.sample(embedding=emb)
    back = decode(_topic(msg), encode(msg))
    assert back == msg and back.embedding == emb
    assert np.allclose(dequantize_embedding(back.embedding), np.arange(1, 17) / np.linalg.norm(np.arange(1, 17)),
                       atol=0.01)


def test_sample_without_embedding_has_no_header_key():
    msg = fx.sample()
    assert "embedding" not in msg.header()
    assert decode(_topic(msg), encode(msg)).embedding == b""


def test_oversized_or_non_binary_embedding_is_refused():
    for value in (bytes(MAX_EMBEDDING_DIM + 1), "text", [1, 2]):
        msg = fx.sample()
        header = {**msg.header(), "embedding": value}
        payload = envelope.pack("sample", header, msg.jpeg)
        with pytest.raises(ProtocolError) as e:
            decode(_topic(msg), payload)
        assert e.value.reason == "bad_field" and "embedding" in str(e.value)


def test_provider_in_status_and_telemetry():
    for msg in (fx.status(provider="cuda"), fx.telemetry(provider="cpu")):
        assert decode(_topic(msg), encode(msg)) == msg


def test_minor_0_messages_without_new_fields_still_decode():
    """A receiver of minor 1 reads what an older agent sends: no provider, no embedding."""
    for msg in (fx.status(), fx.telemetry(), fx.sample()):
        header = {k: v for k, v in msg.header().items() if k not in ("provider", "embedding")}
        payload = bytearray(envelope.pack(msg.KIND, header, msg.body() if hasattr(msg, "body") else b""))
        payload[3] = 0
        assert decode(_topic(msg), bytes(payload)) == msg


def test_envelope_says_minor_1():
    assert encode(fx.status())[3] >= 1  # minor 2 added status.tags, answered, config_*
    assert msgpack.unpackb(encode(fx.status())[10:])["provider"] == ""
