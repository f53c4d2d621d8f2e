"""The MQTT topic tree shared by agents and the central server.

Every topic starts with ``edgeloop/v{MAJOR}/``. The major version in the topic
is the envelope's major version: a receiver subscribes only to the majors it
understands, so an agent fleet can be upgraded to v2 topics while v1 collectors
still run.

See protocol/README.md for the reference table (kept honest by
tests/test_protocol_docs.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ProtocolError

PROTOCOL_MAJOR = 1
ROOT = f"edgeloop/v{PROTOCOL_MAJOR}"

# Ids appear inside topics, so they must not contain MQTT wildcards or
# separators. The same rule applies to agent, camera and model names.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: "$" would accept a trailing newline
# The same rule for JSON-schema and pydantic patterns (their "$" is the end of the text; they have no \Z).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# Frame ids are unique across the fleet: "<agent>.<camera>.<counter or uuid>".
FRAME_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,191}\Z")


@dataclass(frozen=True)
class TopicSpec:
    """One row of the topic reference."""

    kind: str  # message kind carried on this topic
    pattern: str  # with {placeholders}
    direction: str
    qos: int
    retained: bool


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("sample", ROOT + "/agents/{agent_id}/samples/{camera_id}", "agent → server", 1, False),
    TopicSpec("receipt", ROOT + "/agents/{agent_id}/receipts", "server → agent", 1, False),
    TopicSpec("status", ROOT + "/agents/{agent_id}/status", "agent → server", 1, True),
    TopicSpec("telemetry", ROOT + "/agents/{agent_id}/telemetry", "agent → server", 0, False),
    TopicSpec("command", ROOT + "/agents/{agent_id}/commands", "server → agent", 1, False),
    TopicSpec("announcement", ROOT + "/models/{model_name}/announce", "server → agents", 1, True),
    TopicSpec("config", ROOT + "/groups/{group}/config", "server → agents", 1, True),
)
SPEC_BY_KIND = {spec.kind: spec for spec in TOPICS}


def check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ProtocolError("bad_id", f"{what} must match {ID_RE.pattern}, got {value!r:.80}")
    return value


def sample_topic(agent_id: str, camera_id: str) -> str:
    return f"{ROOT}/agents/{check_id(agent_id, 'agent_id')}/samples/{check_id(camera_id, 'camera_id')}"


def receipt_topic(agent_id: str) -> str:
    return f"{ROOT}/agents/{check_id(agent_id, 'agent_id')}/receipts"


def status_topic(agent_id: str) -> str:
    return f"{ROOT}/agents/{check_id(agent_id, 'agent_id')}/status"


def telemetry_topic(agent_id: str) -> str:
    return f"{ROOT}/agents/{check_id(agent_id, 'agent_id')}/telemetry"


def command_topic(agent_id: str) -> str:
    return f"{ROOT}/agents/{check_id(agent_id, 'agent_id')}/commands"


def announce_topic(model_name: str) -> str:
    return f"{ROOT}/models/{check_id(model_name, 'model_name')}/announce"


def config_topic(group: str) -> str:
    return f"{ROOT}/groups/{check_id(group, 'group')}/config"


# Subscription filters used by the server. The shared form lets several
# collector processes split the sample load (MQTT 5 shared subscriptions).
SAMPLES_FILTER = ROOT + "/agents/+/samples/+"
STATUS_FILTER = ROOT + "/agents/+/status"
TELEMETRY_FILTER = ROOT + "/agents/+/telemetry"
ANNOUNCE_FILTER = ROOT + "/models/+/announce"
CONFIG_FILTER = ROOT + "/groups/+/config"


def shared(filter_: str, group: str = "collectors") -> str:
    """The MQTT 5 shared-subscription form of ``filter_``."""
    return f"$share/{check_id(group, 'group')}/{filter_}"


@dataclass(frozen=True)
class ParsedTopic:
    kind: str
    major: int
    agent_id: str | None = None
    camera_id: str | None = None
    model_name: str | None = None
    group: str | None = None


_TOPIC_RE = re.compile(
    r"^edgeloop/v(?P<major>[0-9]{1,3})/(?:"
    r"agents/(?P<agent>[^/]+)/(?:(?P<akind>receipts|status|telemetry|commands)|samples/(?P<camera>[^/]+))"
    r"|models/(?P<model>[^/]+)/announce|groups/(?P<group>[^/]+)/config)$"
)
_AKIND = {"receipts": "receipt", "status": "status", "telemetry": "telemetry", "commands": "command"}


def parse_topic(topic: object) -> ParsedTopic:
    """Split an edgeloop topic into its kind and ids, or raise ProtocolError."""
    if not isinstance(topic, str) or len(topic) > 512:
        raise ProtocolError("bad_topic", f"not an edgeloop topic: {topic!r:.80}")
    m = _TOPIC_RE.match(topic)
    if not m:
        raise ProtocolError("bad_topic", f"not an edgeloop topic: {topic!r:.80}")
    major = int(m["major"])
    if major != PROTOCOL_MAJOR:
        raise ProtocolError("unsupported_version", f"topic major v{major}, this side speaks v{PROTOCOL_MAJOR}")
    if m["group"] is not None:
        return ParsedTopic("config", major, group=check_id(m["group"], "group"))
    if m["model"] is not None:
        return ParsedTopic("announcement", major, model_name=check_id(m["model"], "model_name"))
    agent = check_id(m["agent"], "agent_id")
    if m["camera"] is not None:
        return ParsedTopic("sample", major, agent_id=agent, camera_id=check_id(m["camera"], "camera_id"))
    return ParsedTopic(_AKIND[m["akind"]], major, agent_id=agent)
