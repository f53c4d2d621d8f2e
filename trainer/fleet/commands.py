"""Commands from the server to agents, and their outcomes.

``Commander.send`` records each command as ``sent`` (trainer/fleet/records.py),
publishes it (QoS 1) on the agent's command topic, and waits, at most until
the command's deadline, for the agent's Status that names it in ``answered``
(protocol minor 2). The outcome is ``answered`` (with that Status),
``timed_out`` (no answer by the deadline; a late answer still turns it into
``answered``) or ``failed`` (the broker did not take it).

Only the server may publish commands: the broker ACL (deploy/mosquitto/acl)
gives write access to ``edgeloop/v1/agents/+/commands`` to the server's
account alone; commands are not signed (docs/operations.md says why).

Threads: ``send`` runs on the caller's thread (an HTTP worker) and waits on
the broker's PUBACK and on the answer (both bounded); ``on_status`` runs on
paho's network thread and only queues a store write, whose completion wakes
the waiters.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Callable

from protocol import Command, ProtocolError, Status, encode
from protocol.topics import command_topic

from . import records
from .errors import FleetError

log = logging.getLogger(__name__)
ACTIONS = Command.ACTIONS
MAX_TIMEOUT_S = 300.0
# Agents refuse a command older than this (Command.expires_at): a late delivery after a reconnect
# never runs. Above MAX_TIMEOUT_S, with room for the agents' clocks to be a few minutes off.
COMMAND_TTL_S = 600.0
MAX_GROUP = 1000  # agents one group command may address


class CommandError(FleetError):
    """A command that cannot be sent."""


class Commander:
    def __init__(self, store, publish: Callable[[str, bytes], None], connected: Callable[[], bool],
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._publish = publish  # (topic, payload): waits for the PUBACK, raises on failure
        self._connected = connected
        self.clock = clock
        self._waiters: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    # -- sending ------------------------------------------------------------------------------

    def to_agent(self, agent_id: str, action: str, args: dict, user: str, timeout_s: float,
                 wait: bool = True) -> dict:
        if not records.known_agent(self.store.db.read(), agent_id):
            raise CommandError(404, f"no agent {agent_id!r} has ever reported to this server")
        return self._send([agent_id], action, args, user, timeout_s, wait, None)[0]

    def to_group(self, group: str, action: str, args: dict, user: str, timeout_s: float,
                 wait: bool = True) -> dict:
        agents = records.agents_in_group(self.store.db.read(), group)
        if not agents:
            raise CommandError(404, f"no agent reported group {group!r} (its config's groups)")
        if len(agents) > MAX_GROUP:
            raise CommandError(409, f"group {group!r} has {len(agents)} agents; at most {MAX_GROUP} per command")
        batch = f"b-{uuid.uuid4().hex[:20]}"
        return {"batch": batch, "group": group, "commands": self._send(agents, action, args, user, timeout_s,
                                                                       wait, (batch, group))}

    def _send(self, agents: list[str], action: str, args: dict, user: str, timeout_s: float, wait: bool,
              batch: tuple[str, str] | None) -> list[dict]:
        if action not in ACTIONS:  # the API's schema refuses it first; a library caller gets the same rule
            raise CommandError(422, f"action must be one of {', '.join(ACTIONS)}")
        if not self._connected():
            raise CommandError(503, "the server is not connected to the broker: nothing was sent")
        now = self.clock()
        deadline = now + min(max(timeout_s, 0.0), MAX_TIMEOUT_S)
        rows = [{"id": f"c-{uuid.uuid4().hex[:20]}", "agent_id": a, "action": action, "args": args,
                 "issued_by": user, "issued_at": now, "deadline": deadline,
                 "batch": batch[0] if batch else None, "group": batch[1] if batch else None} for a in agents]
        try:  # bad args are refused before any row is written
            messages = [(r, encode(Command(r["id"], action, now, dict(args), expires_at=now + COMMAND_TTL_S)))
                        for r in rows]
        except ProtocolError as e:
            raise CommandError(422, f"bad command: {e.detail}") from e
        events = {r["id"]: threading.Event() for r in rows}
        with self._lock:
            self._waiters.update(events)  # before publishing: an answer may beat the PUBACK
        try:
            self.store.db.write(lambda db: records.insert_commands(db, rows))
            for r, payload in messages:
                self._publish_one(r, payload, user)
            if wait:
                for e in events.values():
                    e.wait(max(0.0, deadline - self.clock()))
            if (later := self.clock()) > deadline:
                self.store.db.write(lambda db: records.expire(db, later))
        finally:
            with self._lock:
                for command_id in events:
                    self._waiters.pop(command_id, None)
        return self.get([r["id"] for r in rows])

    def _publish_one(self, row: dict, payload: bytes, user: str) -> None:
        try:
            self._publish(command_topic(row["agent_id"]), payload)
        except Exception as e:  # MqttError, or the client gone: say so in the record, keep the others going
            log.error("command %s to %s was not taken by the broker: %s", row["id"], row["agent_id"], e)
            self.store.db.write(lambda db: records.mark_failed(db, row["id"], f"broker: {e}"))
            self._wake([row["id"]])
            return
        log.info("%s sent %s to %s (%s)", user, row["action"], row["agent_id"], row["id"])

    # -- reading ------------------------------------------------------------------------------

    def get(self, command_ids: list[str]) -> list[dict]:
        self.store.db.write(lambda db: records.expire(db, self.clock()))
        found = {c["id"]: c for c in records.commands(self.store.db.read(), command_ids=command_ids,
                                                      limit=len(command_ids))}
        return [found[i] for i in command_ids if i in found]

    # -- answers (paho's thread) --------------------------------------------------------------

    def on_status(self, status: Status) -> None:
        if not status.answered:
            return
        header = status.header()
        fut = self.store.db.write_async(
            lambda db: records.record_answers(db, status.agent_id, status.answered, header, self.clock()))
        fut.add_done_callback(lambda f: self._wake(f.result() if f.exception() is None else []))

    def _wake(self, command_ids: list[str]) -> None:
        with self._lock:
            for command_id in command_ids:
                e = self._waiters.get(command_id)
                if e is not None:
                    e.set()
