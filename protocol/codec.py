"""encode() and decode(): the only way messages enter or leave the wire."""

from __future__ import annotations

import logging

from . import envelope
from .errors import ProtocolError
from .fields import Fields
from .messages import TYPE_BY_KIND, Announcement, Command, ConfigBundle, Message, Receipt, Sample, Status, Telemetry
from .topics import (announce_topic, command_topic, config_topic, parse_topic, receipt_topic, sample_topic,
                     status_topic, telemetry_topic)

log = logging.getLogger(__name__)


def encode(message: Message) -> bytes:
    """Pack a message into its envelope, validating it exactly as decode would."""
    kind = message.KIND
    header = message.header()
    body = message.jpeg if isinstance(message, Sample) else b""
    payload = envelope.pack(kind, header, body)
    # Sending something the other side will refuse only moves the error to a
    # place where nobody sees it, so check here.
    TYPE_BY_KIND[kind].from_header(Fields(kind, header), body)
    return payload


def decode(topic: str, payload: bytes) -> Message:
    """Validate and decode one MQTT message; any bad input raises ProtocolError."""
    try:
        return _decode(topic, payload)
    except ProtocolError:
        raise
    except Exception as e:  # a bug in a validator must still not crash ingest
        log.exception("unexpected error decoding %r", topic)
        raise ProtocolError("undecodable", f"{type(e).__name__}: {e}") from e


def _decode(topic: str, payload: bytes) -> Message:
    where = parse_topic(topic)
    kind, header, body = envelope.unpack(payload)
    if kind != where.kind:
        raise ProtocolError("kind_mismatch", f"a {kind} payload on a {where.kind} topic")
    if body and kind != "sample":
        raise ProtocolError("unexpected_body", f"{kind} messages carry no body, got {len(body)} bytes")
    message = TYPE_BY_KIND[kind].from_header(Fields(kind, header), body)
    agent_id = getattr(message, "agent_id", None)
    if agent_id is not None and agent_id != where.agent_id:
        raise ProtocolError("topic_mismatch", f"agent_id {agent_id!r} published on {where.agent_id!r}'s topic")
    if isinstance(message, Sample) and message.camera_id != where.camera_id:
        raise ProtocolError("topic_mismatch", f"camera_id {message.camera_id!r} on {where.camera_id!r}'s topic")
    return message


def topic_for(message: Message, agent_id: str | None = None, model_name: str | None = None,
              group: str | None = None) -> str:
    """The topic a message is published on (receipts and commands need the agent id, bundles the group)."""
    if isinstance(message, Sample):
        return sample_topic(message.agent_id, message.camera_id)
    if isinstance(message, Status):
        return status_topic(message.agent_id)
    if isinstance(message, Telemetry):
        return telemetry_topic(message.agent_id)
    if isinstance(message, Receipt):
        return receipt_topic(_need(agent_id, "agent_id"))
    if isinstance(message, Command):
        return command_topic(_need(agent_id, "agent_id"))
    if isinstance(message, Announcement):
        return announce_topic(_need(model_name, "model_name"))
    if isinstance(message, ConfigBundle):
        return config_topic(_need(group, "group"))
    raise TypeError(f"not an edgeloop message: {type(message).__name__}")


def _need(value: str | None, name: str) -> str:
    if value is None:
        raise TypeError(f"{name} is required for this message kind")
    return value
