"""Property and fuzz tests: decode raises ProtocolError and nothing else."""

from __future__ import annotations

import random
import struct
import time

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import factories as fx
from protocol import ProtocolError, decode, encode, topic_for
from protocol import envelope

MESSAGES = [fx.ALL[name]() for name in sorted(fx.ALL)]
TOPICS = [topic_for(m, agent_id="cam-agent-1", model_name="shapes", group="canary") for m in MESSAGES]
VALID = [encode(m) for m in MESSAGES]

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
unit = st.floats(0.0, 1.0, allow_nan=False)


def _only_protocol_errors(topic, payload):
    try:
        decode(topic, payload)
    except ProtocolError:
        pass


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(agent=ids, camera=ids, frame=ids, version=st.integers(0, 2**31), scores=st.lists(unit, min_size=3, max_size=3),
       unc=st.floats(0, 1e6, allow_nan=False), w=st.integers(8, 96), h=st.integers(8, 96))
def test_sample_round_trip(agent, camera, frame, version, scores, unc, w, h):
    msg = fx.sample(agent_id=agent, camera_id=camera, frame_id=frame, model_version=version,
                    scores=tuple(scores), uncertainty=unc, width=w, height=h, jpeg=fx.jpeg(w, h))
    assert decode(topic_for(msg), encode(msg)) == msg


@settings(max_examples=200, deadline=None)
@given(boxes=st.lists(st.tuples(unit, unit, unit, unit, unit, st.integers(0, 1)), max_size=20))
def test_detection_round_trip(boxes):
    from protocol import Box
    norm = tuple(Box(min(a, c), min(b, d), max(a, c), max(b, d), s, lab) for a, b, c, d, s, lab in boxes)
    msg = fx.detection_sample(boxes=norm)
    assert decode(topic_for(msg), encode(msg)) == msg


@settings(max_examples=100, deadline=None)
@given(stored=st.lists(ids, max_size=50), fps=st.floats(0, 1e4, allow_nan=False),
       drops=st.dictionaries(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=10),
                             st.integers(0, 2**40), max_size=5))
def test_receipt_and_telemetry_round_trip(stored, fps, drops):
    r = fx.receipt(stored=tuple(stored), rejected=())
    assert decode(topic_for(r, agent_id="a1"), encode(r)) == r
    t = fx.telemetry(fps=fps, drops=drops)
    assert decode(topic_for(t), encode(t)) == t


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=20),
                    st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=5), max_leaves=20)


FIELDS = ["agent_id", "frame_id", "scores", "boxes", "width", "labels", "state", "drops", "conf_hist", "camera_hist",
          "stored", "rejected", "manifest", "signature", "url", "args", "at", "fps", "captured_at"]


@settings(max_examples=400, deadline=None)
@given(i=st.integers(0, len(MESSAGES) - 1), key=st.sampled_from(FIELDS), value=values)
def test_any_field_value_gives_protocol_error_or_valid(i, key, value):
    msg = MESSAGES[i]
    header = {**msg.header(), key: value}
    body = msg.jpeg if msg.KIND == "sample" else b""
    try:
        payload = envelope.pack(msg.KIND, header, body)
    except (ProtocolError, TypeError, ValueError, OverflowError):
        return  # not representable in msgpack
    _only_protocol_errors(TOPICS[i], payload)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4096), i=st.integers(0, len(TOPICS) - 1))
def test_random_bytes(data, i):
    _only_protocol_errors(TOPICS[i], data)
    _only_protocol_errors(TOPICS[i], b"EL\x01\x00\x01\x00" + data)


def _mutate(rng: random.Random, payload: bytes) -> bytes:
    buf = bytearray(payload)
    op = rng.randrange(6)
    if op == 0:  # truncate
        return bytes(buf[: rng.randrange(len(buf))])
    if op == 1:  # flip bits
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif op == 2:  # absurd header length
        buf[6:10] = struct.pack(">I", rng.choice([0, 1, 2**32 - 1, 2**31, len(buf), len(buf) * 1000]))
    elif op == 3:  # overwrite a random span with random bytes
        start = rng.randrange(len(buf))
        buf[start:start + 16] = rng.randbytes(16)
    elif op == 4:  # huge declared sizes and counts inside the header
        header = msgpack.unpackb(payload[10:10 + struct.unpack(">I", payload[6:10])[0]], raw=False)
        for k in list(header)[: rng.randint(1, 3)]:
            header[k] = rng.choice([2**63 - 1, -1, 10**9, "x" * 100, [0] * 1000, {}, None, 1e308])
        return envelope.PREFIX.pack(b"EL", 1, 0, payload[4], 0, 0)[:6] + _hdr(header) + payload[10 + struct.unpack(
            ">I", payload[6:10])[0]:]
    else:  # splice two payloads
        other = rng.choice(VALID)
        cut = rng.randrange(len(buf))
        return bytes(buf[:cut]) + other[cut:]
    return bytes(buf)


def _hdr(header: dict) -> bytes:
    raw = msgpack.packb(header, use_bin_type=True)
    return struct.pack(">I", len(raw)) + raw


def test_100k_mutated_payloads_only_raise_protocol_error():
    rng = random.Random(1234)
    start = time.perf_counter()
    accepted = 0
    n = 100_000
    for k in range(n):
        i = rng.randrange(len(VALID))
        payload = _mutate(rng, VALID[i]) if k % 10 else rng.randbytes(rng.randrange(64))
        try:
            decode(TOPICS[i], payload)
            accepted += 1
        except ProtocolError:
            pass
    elapsed = time.perf_counter() - start
    print(f"\n{n} mutated payloads in {elapsed:.1f}s ({n / elapsed:,.0f}/s), {accepted} still valid")
    assert accepted < n // 2  # the mutations really did break most payloads
