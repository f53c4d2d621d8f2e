"""The edgeloop wire protocol: MQTT topics, the binary envelope, every message.

    from protocol import decode, encode, ProtocolError
"""

from .codec import decode, encode, topic_for
from .errors import ProtocolError
from .messages import (Announcement, Box, Command, ConfigBundle, MESSAGE_TYPES, Message, Receipt, Sample, Status,
                       Telemetry, HIST_BINS)
from .topics import PROTOCOL_MAJOR, TOPICS, parse_topic

__all__ = [
    "Announcement", "Box", "Command", "ConfigBundle", "HIST_BINS", "MESSAGE_TYPES", "Message", "PROTOCOL_MAJOR", "ProtocolError",
    "Receipt", "Sample", "Status", "TOPICS", "Telemetry", "decode", "encode", "parse_topic", "topic_for",
]
