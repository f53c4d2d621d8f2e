"""The codec: round trips, and every kind of bad input gives ProtocolError with a reason."""

from __future__ import annotations

import struct

import msgpack
import pytest

import factories as fx
from protocol import ProtocolError, decode, encode, topic_for
from protocol import envelope
from protocol.jpeg import jpeg_size
from protocol.topics import ROOT, parse_topic, sample_topic, shared


def _topic(msg):
    return topic_for(msg, agent_id="cam-agent-1", model_name="shapes", group="canary")


@pytest.mark.parametrize("name", sorted(fx.ALL))
def test_round_trip(name):
    msg = fx.ALL[name]()
    assert decode(_topic(msg), encode(msg)) == msg


def test_sample_jpeg_travels_as_raw_bytes():
    msg = fx.sample()
    payload = encode(msg)
    assert payload.endswith(msg.jpeg)
    assert len(payload) < len(msg.jpeg) + 600  # metadata is small next to the image


def _reason(topic, payload) -> str:
    with pytest.raises(ProtocolError) as e:
        decode(topic, payload)
    return e.value.reason


def _repack(msg, **header_changes) -> bytes:
    header = {**msg.header(), **header_changes}
    return envelope.pack(msg.KIND, header, msg.jpeg if msg.KIND == "sample" else b"")


S_TOPIC = sample_topic("cam-agent-1", "gate")


@pytest.mark.parametrize("changes,reason", [
    ({"scores": [0.5, float("nan"), 0.1]}, "bad_field"),
    ({"scores": [0.5, 0.5]}, "bad_field"),
    ({"width": 10**9}, "bad_field"),
    ({"width": 65}, "size_mismatch"),
    ({"frame_id": "a/b#"}, "bad_field"),
    ({"labels": []}, "bad_field"),
    ({"task": "segmentation"}, "bad_field"),
    ({"captured_at": "yesterday"}, "bad_field"),
    ({"model_version": -1}, "bad_field"),
    ({"uncertainty": True}, "bad_field"),
])
def test_bad_sample_fields(changes, reason):
    assert _reason(S_TOPIC, _repack(fx.sample(), **changes)) == reason


def test_missing_field_is_named():
    header = fx.sample().header()
    del header["frame_id"]
    with pytest.raises(ProtocolError, match="sample.frame_id is required"):
        decode(S_TOPIC, envelope.pack("sample", header, fx.jpeg()))


def test_bad_boxes():
    det = fx.detection_sample()
    assert _reason(S_TOPIC, _repack(det, boxes=[[0.1, 0.2, 1.5, 0.4, 0.5, 0]])) == "bad_field"
    assert _reason(S_TOPIC, _repack(det, boxes=[[0.5, 0.2, 0.1, 0.4, 0.5, 0]])) == "bad_field"
    assert _reason(S_TOPIC, _repack(det, boxes=[[0.1, 0.2, 0.3, 0.4, 0.5, 7]])) == "bad_field"
    assert _reason(S_TOPIC, _repack(det, boxes=[[0.1, 0.2]])) == "bad_field"


def test_non_jpeg_body():
    msg = fx.sample()
    payload = envelope.pack("sample", msg.header(), b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert _reason(S_TOPIC, payload) == "not_jpeg"


def test_truncated_jpeg_has_no_size():
    assert _reason(S_TOPIC, envelope.pack("sample", fx.sample().header(), fx.jpeg()[:20])) in ("bad_jpeg",)


def test_jpeg_size_reads_sof():
    assert jpeg_size(fx.jpeg(321, 123)) == (321, 123)


def test_envelope_rejections():
    good = encode(fx.sample())
    assert _reason(S_TOPIC, b"") == "truncated"
    assert _reason(S_TOPIC, b"XX" + good[2:]) == "bad_magic"
    assert _reason(S_TOPIC, good[:2] + bytes([2]) + good[3:]) == "unsupported_version"
    assert _reason(S_TOPIC, good[:4] + bytes([99]) + good[5:]) == "unknown_kind"
    assert _reason(S_TOPIC, good[:5] + bytes([1]) + good[6:]) == "bad_flags"
    assert _reason(S_TOPIC, good[:6] + struct.pack(">I", 2**31) + good[10:]) == "header_too_large"
    assert _reason(S_TOPIC, good[:6] + struct.pack(">I", 200_000) + good[10:]) == "truncated"
    assert _reason(S_TOPIC, good[:10] + b"\xc1" + good[11:]) == "bad_header"
    assert _reason(S_TOPIC, "not bytes") == "bad_payload"
    assert _reason(S_TOPIC, bytes(envelope.MAX_PAYLOAD + 1)) == "payload_too_large"


def test_newer_minor_with_unknown_fields_is_accepted():
    msg = fx.status()
    payload = bytearray(envelope.pack("status", {**msg.header(), "added_in_a_later_minor": [1, 2]}))
    assert payload[3] == envelope.MINOR == 4
    payload[3] = envelope.MINOR + 1  # a newer minor than this side speaks
    assert decode(topic_for(msg), bytes(payload)) == msg


def test_telemetry_camera_hist_round_trip_and_absent_when_empty():
    hist = {"gate": {"cat": (1,) * 10, "dog": (0,) * 9 + (7,)}, "dock": {"cat": (2,) * 10}}
    msg = fx.telemetry(camera_hist=hist)
    assert decode(topic_for(msg), encode(msg)) == msg
    assert "camera_hist" not in fx.telemetry().header()  # optional: an older server never sees it
    old = fx.telemetry()  # a minor-3 agent's telemetry has no camera_hist: it reads as no cameras
    assert decode(topic_for(old), envelope.pack("telemetry", old.header())).camera_hist == {}


@pytest.mark.parametrize("camera_hist", [
    {f"cam{i}": {"cat": [1] * 10} for i in range(65)},  # more than 64 cameras
    {"bad/id": {"cat": [1] * 10}},
    {"gate": {"cat": [1] * 9}},  # not 10 bins
    {"gate": {"cat": [1] * 9 + [-1]}},
    {"gate": {"cat": [1] * 9 + [1.5]}},
    {"gate": [[1] * 10]},
    {"gate": {"ca\x00t": [1] * 10}},
    [1, 2],
])
def test_telemetry_camera_hist_bounds(camera_hist):
    msg = fx.telemetry()
    payload = envelope.pack("telemetry", {**msg.header(), "camera_hist": camera_hist})
    assert _reason(topic_for(msg), payload) == "bad_field"


def test_telemetry_camera_hist_takes_64_cameras():
    hist = {f"cam{i}": {"cat": (1,) * 10} for i in range(64)}
    msg = fx.telemetry(camera_hist=hist)
    assert decode(topic_for(msg), encode(msg)).camera_hist == hist


def test_header_must_be_a_map():
    raw = msgpack.packb([1, 2, 3])
    payload = envelope.PREFIX.pack(b"EL", 1, 0, 3, 0, len(raw)) + raw
    assert _reason(topic_for(fx.status()), payload) == "bad_header"


def test_topic_checks():
    payload = encode(fx.sample())
    assert _reason("other/v1/agents/a/samples/b", payload) == "bad_topic"
    assert _reason(f"{ROOT}/agents/a/samples", payload) == "bad_topic"
    assert _reason("edgeloop/v2/agents/cam-agent-1/samples/gate", payload) == "unsupported_version"
    assert _reason(sample_topic("someone-else", "gate"), payload) == "topic_mismatch"
    assert _reason(sample_topic("cam-agent-1", "door"), payload) == "topic_mismatch"
    assert _reason(topic_for(fx.status()), payload) == "kind_mismatch"
    assert _reason(f"{ROOT}/agents/+/samples/gate", payload) == "bad_id"


def test_body_only_on_samples():
    msg = fx.status()
    assert _reason(topic_for(msg), envelope.pack("status", msg.header(), b"x")) == "unexpected_body"


def test_parse_topic_and_shared_filter():
    t = parse_topic(S_TOPIC)
    assert (t.kind, t.agent_id, t.camera_id) == ("sample", "cam-agent-1", "gate")
    assert parse_topic(f"{ROOT}/models/shapes/announce").model_name == "shapes"
    assert shared(f"{ROOT}/agents/+/samples/+") == f"$share/collectors/{ROOT}/agents/+/samples/+"


def test_encode_refuses_what_decode_would_refuse():
    with pytest.raises(ProtocolError):
        encode(fx.sample(width=999))
    with pytest.raises(ProtocolError):
        encode(fx.command(action="format_disk"))


def test_receipt_limits():
    ids = tuple(f"a.b.{i}" for i in range(2000))
    with pytest.raises(ProtocolError):
        encode(fx.receipt(stored=ids))


def test_announcement_url_and_signature_length():
    with pytest.raises(ProtocolError):
        encode(fx.announcement(url="file:///etc/passwd"))
    with pytest.raises(ProtocolError):
        encode(fx.announcement(signature=b"short"))


def test_ids_refuse_a_trailing_newline():
    with pytest.raises(ProtocolError):
        sample_topic("cam-1\n", "gate")
    assert _reason(S_TOPIC, _repack(fx.sample(), frame_id="a.b.1\n")) == "bad_field"


@pytest.mark.parametrize("changes", [
    {"reason": "band\x00x"}, {"strategy": "mar\x00gin"}, {"reason": "a\x1bb"}, {"reason": "two\nlines"},
    {"labels": ["cat\x00", "dog", "bird"]}, {"labels": ["cat", "d\x7fog", "bird"]},
])
def test_control_characters_are_refused(changes):
    # PostgreSQL refuses a NUL in a text column: one such sample once blocked all ingest.
    assert _reason(S_TOPIC, _repack(fx.sample(), **changes)) == "bad_field"


def test_status_detail_may_span_lines_but_holds_no_nul():
    topic = _topic(fx.status())
    ok = fx.status(detail="load failed:\n\tline 2\r\n")
    assert decode(topic, encode(ok)).detail == ok.detail
    for bad in ("x\x00y", "bell\x07", "esc\x1b[2J"):
        assert _reason(topic, _repack(fx.status(), detail=bad)) == "bad_field"
        with pytest.raises(ProtocolError):
            encode(fx.status(detail=bad))
    assert _reason(topic, _repack(fx.status(), tags={"site": "a\x00"})) == "bad_field"
