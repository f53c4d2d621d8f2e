"""The fleet API: commands to agents and groups, their outcomes, configuration bundles per group.

Every route needs a logged-in user; the ones that change what agents do need
the publisher role (trainer/server/roles.py, enforced by ``require_user``;
``require_publisher`` only names the caller). The fleet service is
``app.state.service.fleet`` (trainer/fleet/service.py); without MQTT it is
absent and the write routes answer 404 saying so; the group and bundle listings read the
store and answer anyway.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from protocol import Command
from protocol.topics import ID_PATTERN
from trainer.server.auth import require_user
from trainer.server.deps import StoreDep, User, error_responses

from . import records
from .commands import MAX_TIMEOUT_S
from .errors import FleetError

AgentId = Annotated[str, Path(pattern=ID_PATTERN, description="the agent id")]
Group = Annotated[str, Path(pattern=ID_PATTERN, description="the agent group (an agent config's groups)")]
Action = Literal[Command.ACTIONS]  # type: ignore[valid-type]
Scalar = bool | Annotated[int, Field(ge=-2**63, le=2**63 - 1)] | float | Annotated[str, Field(max_length=1024)] | None


ERRORS = error_responses({
    404: "no such agent, group, command or bundle; or the fleet side is off",
    409: "not possible now (nothing to roll back to...)",
    503: "the broker is not connected or did not take the message",
})


class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Action
    args: dict[Annotated[str, Field(max_length=64)], Scalar] = Field(default_factory=dict, max_length=32)
    timeout_s: float = Field(10.0, ge=0, le=MAX_TIMEOUT_S, description="the deadline for the agent's answer")
    wait: bool = Field(True, description="wait (until the deadline) for the answer before replying")


class BundleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(description="agent config sections that can change live "
                                                 "(agent/README.md, 'Central configuration')")
    note: str = Field("", max_length=512)


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: int | None = Field(None, ge=1, le=2**31, description="the version to go back to (default: the previous)")


def _live(request: Request) -> dict[str, dict]:
    """What agents' last Statuses say (tags, applied bundle); empty without the fleet service."""
    fleet = getattr(request.app.state.service, "fleet", None)
    return fleet.live() if fleet is not None else {}


def groups_view(store, live: dict[str, dict]) -> list[dict[str, Any]]:
    """Every group: its agents (with tags and the bundle version they report) and its newest bundle.

    Read from the store, so it answers (without live details) on a server without MQTT too.
    """
    db = store.db.read()
    out = []
    for group, agents in records.groups(db).items():
        newest = records.bundles(db, group, 1)
        out.append({"group": group, "bundle": newest[0] if newest else None,
                    "agents": [{"agent_id": a, **live.get(a, {})} for a in agents]})
    return out


def _commands(store, **query) -> list[dict[str, Any]]:
    """Commands from the store, past deadlines marked timed_out first (works without the fleet service)."""
    store.db.write(lambda db: records.expire(db, time.time()))
    return records.commands(store.db.read(), **query)


def _fleet(request: Request):
    service = getattr(request.app.state, "service", None)
    fleet = getattr(service, "fleet", None)
    if fleet is None:
        raise HTTPException(404, "fleet operations are off on this server: they need [mqtt] enabled")
    return fleet


@contextmanager
def _refusals():
    """A command or bundle the fleet refuses: its own status and reason."""
    try:
        yield
    except FleetError as e:
        raise HTTPException(e.status, e.detail) from e


def require_publisher(user: User) -> str:
    """The caller's name; commands and bundles need the publisher role, which ``require_user`` already
    checked against trainer/server/roles.py (the one table of every route's role)."""
    return user


Publisher = Annotated[str, Depends(require_publisher)]


def api_router() -> APIRouter:
    """The ``/api`` fleet routes: reads behind ``require_user``, writes behind ``require_publisher``."""
    api = APIRouter(prefix="/api", tags=["fleet"], dependencies=[Depends(require_user)], responses=ERRORS)

    @api.post("/agents/{agent_id}/commands", summary="send a command to one agent and wait for its answer")
    def command_agent(request: Request, agent_id: AgentId, body: CommandIn, user: Publisher) -> dict[str, Any]:
        with _refusals():
            return _fleet(request).commander.to_agent(agent_id, body.action, body.args, user, body.timeout_s,
                                                      body.wait)

    @api.post("/groups/{group}/commands", summary="send a command to every agent of a group")
    def command_group(request: Request, group: Group, body: CommandIn, user: Publisher) -> dict[str, Any]:
        with _refusals():
            return _fleet(request).commander.to_group(group, body.action, body.args, user, body.timeout_s,
                                                      body.wait)

    @api.get("/commands/{command_id}", summary="one command and its outcome (sent, answered, timed_out, failed)")
    def get_command(store: StoreDep, command_id: Annotated[str, Path(pattern=ID_PATTERN)]) -> dict[str, Any]:
        found = _commands(store, command_ids=[command_id], limit=1)
        if not found:
            raise HTTPException(404, f"no command {command_id!r}")
        return found[0]

    @api.get("/commands", summary="recent commands, newest first")
    def list_commands(store: StoreDep, agent_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
                      batch: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
        return _commands(store, agent_id=agent_id, batch=batch, limit=limit)

    @api.get("/groups", summary="agent groups with their agents (tags, applied bundle) and current bundle")
    def list_groups(request: Request, store: StoreDep) -> list[dict[str, Any]]:
        return groups_view(store, _live(request))

    @api.get("/groups/{group}/bundles", summary="a group's configuration bundles, newest first")
    def list_bundles(store: StoreDep, group: Group) -> list[dict[str, Any]]:
        return records.bundles(store.db.read(), group)

    @api.post("/groups/{group}/bundles", summary="sign and publish a new configuration bundle for a group")
    def push_bundle(request: Request, group: Group, body: BundleIn, user: Publisher) -> dict[str, Any]:
        with _refusals():
            return _fleet(request).bundles.push(group, body.settings, user, body.note)

    @api.post("/groups/{group}/bundles/rollback", summary="re-publish an earlier bundle as a new version")
    def rollback_bundle(request: Request, group: Group, body: RollbackIn, user: Publisher) -> dict[str, Any]:
        with _refusals():
            return _fleet(request).bundles.rollback(group, user, body.to)

    return api
