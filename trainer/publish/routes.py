"""HTTP routes: model downloads for agents, and the ``/api/models`` API for people and scripts.

``router`` serves ``GET /models/{name}/{version}.onnx`` WITHOUT authentication:
agents hold no UI token. That is safe because the route only serves files
the registry has registered and announced (a signed manifest promising
their sha256 and size exists), looked up by name and integer version, never
a path from the request; the files are the same models every agent
receives. Serve it over HTTPS or a private network if the models are secret.

``api_router(require_user)`` is authenticated (the server's
``trainer.server.auth.require_user`` by default). Both read their services
from ``app.state``: ``registry`` (Registry), ``publishing``
(PublishingService, for publish/rollback/rollout) and ``rounds``
(trainer.rounds.pipeline.RoundManager); a missing one answers 404 (the feature is not configured here).
"""

from __future__ import annotations

import base64
import logging
import os
from contextlib import contextmanager
from typing import Annotated, Any, Callable

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from protocol.manifest import Cohort
from protocol.topics import ID_PATTERN
from trainer.server.deps import ErrorOut, error_responses

from .lineage import example_lineage
from .mqttlink import MqttError
from .publisher import PublishError
from .registry import ModelNotFound, ModelRecord, Registry, RegistryError

log = logging.getLogger(__name__)

Name = Annotated[str, Path(pattern=ID_PATTERN, description="the model name")]
Version = Annotated[int, Path(ge=1, le=2**31, description="the model version")]
router = APIRouter(tags=["models"])


API_ERRORS = error_responses({
    409: "not possible now (a round is running, nothing to roll back to...)",
    404: "no such model, or registry, publishing or rounds not configured",
    503: "the broker did not take the announcement",
})


def registry_of(request: Request) -> Registry:
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        # Not a 503: nothing is unavailable, this server simply publishes no models
        # (it has no [rounds] or [publish] in its config).
        raise HTTPException(404, "this server has no model registry (no [rounds] or [publish] in its config)")
    return registry


RegistryDep = Annotated[Registry, Depends(registry_of)]


@router.head("/models/{name}/{version}.onnx", response_class=FileResponse, operation_id="model_file_head",
             summary="size and sha256 of an announced model file",
             responses={404: {"model": ErrorOut}, 410: {"model": ErrorOut}, 503: {"model": ErrorOut}})
@router.get("/models/{name}/{version}.onnx", response_class=FileResponse, operation_id="model_file",
            summary="download an announced model file (no authentication; see docs/publishing.md)",
            responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": ErrorOut},
                       410: {"model": ErrorOut}, 503: {"model": ErrorOut}})
def download(name: Name, version: Version, registry: RegistryDep) -> FileResponse:
    record = registry.servable(name, version)
    if record is None:
        raise HTTPException(404, f"no announced model {name} v{version}")
    try:
        size = os.stat(record.file_path).st_size
    except OSError as e:
        log.error("model file of %s v%d is missing: %s", name, version, e)
        raise HTTPException(410, f"the file of {name} v{version} is gone") from e
    if size != record.size:
        # Agents would refuse it anyway (sha256), but say where the fault is.
        log.error("model file %s is %d bytes, the registry says %d", record.file_path, size, record.size)
        raise HTTPException(500, f"the file of {name} v{version} does not match the registry")
    return FileResponse(record.file_path, media_type="application/octet-stream",
                        filename=f"{name}-{version}.onnx", content_disposition_type="attachment",
                        headers={"X-Content-SHA256": record.sha256,
                                 "Cache-Control": "public, max-age=31536000, immutable"})


# -- the authenticated API ------------------------------------------------------------------------

class CohortIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str = Field("fleet", pattern="^(canary|fleet)$")
    percent: int = Field(0, ge=0, le=100)
    agents: list[Annotated[str, Field(pattern=ID_PATTERN)]] = Field(default_factory=list, max_length=10000)
    groups: list[Annotated[str, Field(pattern=ID_PATTERN)]] = Field(default_factory=list, max_length=256)

    def cohort(self) -> Cohort:
        return Cohort(self.stage, self.percent, tuple(self.agents), tuple(self.groups))


class PublishIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    staged: bool = True  # canary first, watched, then fleet; false: announce to ``cohort`` at once
    cohort: CohortIn = CohortIn()


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: int | None = Field(None, ge=1, le=2**31)


def _model(m: ModelRecord, detail: bool = False) -> dict[str, Any]:
    d = m.to_dict()
    if not detail:
        d.pop("config")
    return d


def _publication(p: dict) -> dict[str, Any]:
    return {**p, "manifest": p["manifest"].decode(), "signature": base64.b64encode(p["signature"]).decode()}


def _service(request: Request):
    svc = getattr(request.app.state, "publishing", None)
    if svc is None:
        raise HTTPException(404, "publishing is not configured on this server (no [publish] in its config)")
    return svc


def _rounds(request: Request):
    rounds = getattr(request.app.state, "rounds", None)
    if rounds is None:
        raise HTTPException(404, "training rounds are not configured on this server (no [rounds] in its config)")
    return rounds


@contextmanager
def _not_found():
    """A model the registry does not hold is a 404."""
    try:
        yield
    except ModelNotFound as e:
        raise HTTPException(404, str(e)) from e


@contextmanager
def _announcing():
    """What stops an announcement, as HTTP: the broker (503), no such model (404), not possible now (409)."""
    try:
        yield
    except MqttError as e:
        raise HTTPException(503, f"the broker did not take the announcement: {e}") from e
    except (RegistryError, PublishError) as e:
        raise HTTPException(404 if isinstance(e, ModelNotFound) else 409, str(e)) from e


def api_router(require_user: Callable[..., str] | None = None) -> APIRouter:
    """The ``/api/models`` routes, protected by ``require_user`` (default: the server's auth).

    Declared in this order because the first matching route wins: ``rounds``, ``by-example`` and
    ``rollout`` before the ``/{name}/{version}`` templates that would take them for a name or version.
    """
    if require_user is None:
        from trainer.server.auth import require_user
    api = APIRouter(prefix="/api/models", tags=["models"], dependencies=[Depends(require_user)],
                    responses=API_ERRORS)
    _round_routes(api, require_user)
    _model_routes(api)
    _rollout_routes(api, require_user)
    _version_routes(api)
    _publish_routes(api, require_user)
    return api


def _model_routes(api: APIRouter) -> None:
    """Reading the registry across versions: the list, an example's lineage, two versions compared."""

    @api.get("", summary="every registered model, newest first")
    def list_models(registry: RegistryDep,
                    name: Annotated[str | None, Query(pattern=ID_PATTERN)] = None) -> list[dict[str, Any]]:
        return [_model(m) for m in registry.models(name)]

    @api.get("/by-example/{example_id}", summary="lineage of an example: who sampled and labelled it, "
             "and the models whose rounds used it")
    def by_example(request: Request, registry: RegistryDep,
                   example_id: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
        service = getattr(request.app.state, "service", None)
        return example_lineage(example_id, registry, getattr(service, "store", None))

    @api.get("/{name}/compare", summary="two versions side by side: metrics, per-class metrics, config")
    def compare(registry: RegistryDep, name: Name, a: Annotated[int, Query(ge=1, le=2**31)],
                b: Annotated[int, Query(ge=1, le=2**31)]) -> dict[str, Any]:
        with _not_found():
            left, right = registry.get(name, a), registry.get(name, b)
        delta = {k: right.metrics[k] - left.metrics[k] for k in left.metrics
                 if isinstance(left.metrics.get(k), (int, float)) and isinstance(right.metrics.get(k), (int, float))}
        return {"a": _model(left, True), "b": _model(right, True), "metric_delta": delta}


def _version_routes(api: APIRouter) -> None:
    """One version: its record, announcements and events; the examples it was trained and tested on."""

    @api.get("/{name}/{version}", summary="one model with its announcements and events")
    def get_model(registry: RegistryDep, name: Name, version: Version) -> dict[str, Any]:
        with _not_found():
            m = registry.get(name, version)
        return {**_model(m, True), "publications": [_publication(p) for p in registry.publications(name, version)],
                "events": registry.events(name, version)}

    @api.get("/{name}/{version}/examples", summary="lineage: the examples a model was trained and tested on")
    def model_examples(registry: RegistryDep, name: Name, version: Version) -> dict[str, str]:
        with _not_found():
            return registry.examples_of(name, version)


def _publish_routes(api: APIRouter, require_user: Callable[..., str]) -> None:
    """Announcing a version (staged, or to a cohort at once) and rolling back to an earlier one."""

    @api.post("/{name}/{version}/publish", status_code=202, summary="publish a version (staged or to a cohort)")
    def publish(request: Request, name: Name, version: Version, body: PublishIn,
                user: str = Depends(require_user)) -> dict[str, Any]:
        svc = _service(request)
        with _announcing():
            svc.registry.get(name, version)
            if body.staged:
                svc.controller.roll_out_async(name, version)
                return {"name": name, "version": version, "staged": True}
            p = svc.controller.publish(name, version, body.cohort.cohort())
        log.info("%s published %s v%d to %s", user, name, version, body.cohort.stage)
        return {"name": name, "version": version, "staged": False, "url": p.announcement.url}

    @api.post("/{name}/rollback", summary="re-announce an earlier model under a new, higher version")
    def rollback(request: Request, name: Name, body: RollbackIn,
                 user: str = Depends(require_user)) -> dict[str, Any]:
        svc = _service(request)
        with _announcing():
            p = svc.controller.rollback(name, body.to)
        log.warning("%s rolled %s back: v%d (%s)", user, name, p.record.version, p.record.note)
        return {"name": name, "version": p.record.version, "note": p.record.note}


def _round_routes(api: APIRouter, require_user: Callable[..., str]) -> None:
    """Declared first so ``/api/models/rounds`` is not taken for a model named "rounds"."""
    from trainer.rounds.worker import Busy

    @api.get("/rounds", summary="the running or last round: progress (epoch, loss, val_loss) and outcome")
    def round_progress(request: Request) -> dict[str, Any]:
        return _rounds(request).progress()

    @api.post("/rounds", status_code=202, summary="start a training round now")
    def start_round(request: Request, user: str = Depends(require_user)) -> dict[str, Any]:
        try:
            round_id = _rounds(request).start_round(f"started by {user}")
        except Busy as e:
            raise HTTPException(409, str(e)) from e
        return {"round_id": round_id}

    @api.post("/rounds/cancel", summary="cancel the running round")
    def cancel_round(request: Request) -> dict[str, Any]:
        return {"cancelled": _rounds(request).cancel()}


def _rollout_routes(api: APIRouter, require_user: Callable[..., str]) -> None:
    """Where a staged rollout stands, and pause, resume, abort (cancel is the older name of abort)."""

    @api.get("/{name}/rollout", summary="the staged rollout in progress or the last one: stage k of n, agents"
             " per stage on the new version, hold left, health")
    def rollout_status(request: Request, name: Name) -> dict[str, Any]:
        return _service(request).controller.status(name)

    def _rollout_action(request: Request, name: str, user: str, action: str) -> dict[str, Any]:
        controller = _service(request).controller
        done = {"pause": controller.pause, "resume": controller.resume, "abort": controller.abort}[action](name)
        if not done:
            state = controller.status(name).get("state")
            raise HTTPException(409, f"no rollout of {name} to {action} (its rollout is {state})")
        log.warning("%s: %s the rollout of %s", user, action, name)
        return {"name": name, "action": action, **controller.status(name)}

    @api.post("/{name}/rollout/pause", summary="freeze the rollout's hold: it stops widening (failures still halt)")
    def rollout_pause(request: Request, name: Name, user: str = Depends(require_user)) -> dict[str, Any]:
        return _rollout_action(request, name, user, "pause")

    @api.post("/{name}/rollout/resume", summary="resume a paused rollout where its hold stopped")
    def rollout_resume(request: Request, name: Name, user: str = Depends(require_user)) -> dict[str, Any]:
        return _rollout_action(request, name, user, "resume")

    @api.post("/{name}/rollout/abort", summary="abort the rollout in progress: halt and roll back")
    def rollout_abort(request: Request, name: Name, user: str = Depends(require_user)) -> dict[str, Any]:
        return _rollout_action(request, name, user, "abort")

    @api.post("/{name}/rollout/cancel", summary="halt the rollout in progress and roll back")
    def rollout_cancel(request: Request, name: Name, user: str = Depends(require_user)) -> dict[str, Any]:
        cancelled = _service(request).controller.cancel_current(name)
        if cancelled:
            log.warning("%s cancelled the rollout of %s", user, name)
        return {"cancelled": cancelled}
