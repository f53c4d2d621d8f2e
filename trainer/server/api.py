"""The REST API: everything the review UI does, scriptable (see /docs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse

from trainer.store import Conflict, InvalidLabel, NotFound, QueueFilter, Store

from . import schemas as s
from .auth import COOKIE, Auth, RateLimited, bearer, require_user, safe_next
from .deps import StoreDep, User, error_responses
from .metrics import render as render_metrics

ERRORS = error_responses({}, forbidden="missing X-CSRF-Token on a cookie-authenticated write")
NOT_FOUND = {404: {"model": s.ErrorOut, "description": "no such item"}}
ID_MAX = 2**62
SHORT = dict(max_length=64)
ItemId = Annotated[int, Path(ge=1, le=ID_MAX, description="the item (example) id")]

router = APIRouter(prefix="/api", responses=ERRORS)
public = APIRouter()


def _item(store: Store, item_id: int) -> s.ItemOut:
    project = store.project()
    try:
        return s.item_out(store.item(item_id), project.task)
    except NotFound as e:
        raise HTTPException(404, str(e)) from e


@router.get("/project", response_model=s.ProjectOut, summary="the project's task, labels and batch size")
def get_project(user: User, store: StoreDep) -> s.ProjectOut:
    p = store.project()
    return s.ProjectOut(name=p.name, task=p.task, labels=list(p.labels), batch_size=p.batch_size)


@router.get("/queue", response_model=s.QueueOut, summary="samples to review, best expected value first")
def get_queue(user: User, store: StoreDep,
              camera: Annotated[str | None, Query(**SHORT)] = None,
              agent: Annotated[str | None, Query(**SHORT)] = None,
              model_version: Annotated[int | None, Query(ge=0, le=2**31)] = None,
              predicted: Annotated[str | None, Query(**SHORT)] = None,
              strategy: Annotated[str | None, Query(**SHORT)] = None,
              status: Annotated[str, Query(pattern="^(pending_review|skipped|labeled|rejected)$")] = "pending_review",
              limit: Annotated[int, Query(ge=1, le=200)] = 50,
              offset: Annotated[int, Query(ge=0, le=10**7)] = 0) -> s.QueueOut:
    filters = QueueFilter(camera=camera, agent=agent, model_version=model_version, predicted=predicted,
                          strategy=strategy, status=status)
    items, total = store.queue(filters, limit, offset)
    project = store.project()
    return s.QueueOut(items=[s.item_out(i, project.task) for i in items], total=total,
                      labels=list(project.labels))


@router.get("/labels/pending", response_model=s.PendingLabelsOut,
            summary="label names agents reported that the project does not know (agents never add labels)")
def get_pending_labels(user: User, store: StoreDep) -> s.PendingLabelsOut:
    return s.PendingLabelsOut(pending=[s.PendingLabelOut.model_validate(p) for p in store.pending_labels()],
                              dropped=store.counters().get("pending_labels_dropped", 0))


_PENDING_ERRORS = {**NOT_FOUND, 422: {"model": s.ErrorOut, "description": "not a possible label name"}}


@router.post("/labels/approve", response_model=s.ProjectOut, responses=_PENDING_ERRORS,
             summary="add a pending label name to the project's labels")
def post_approve_label(body: s.LabelNameIn, user: User, store: StoreDep) -> s.ProjectOut:
    try:
        p = store.approve_label(body.name)
    except NotFound as e:
        raise HTTPException(404, str(e)) from e
    except InvalidLabel as e:
        raise HTTPException(422, str(e)) from e
    return s.ProjectOut(name=p.name, task=p.task, labels=list(p.labels), batch_size=p.batch_size)


@router.post("/labels/dismiss", response_model=s.PendingLabelsOut, responses=NOT_FOUND,
             summary="forget a pending label name (it is listed again if an agent reports it again)")
def post_dismiss_label(body: s.LabelNameIn, user: User, store: StoreDep) -> s.PendingLabelsOut:
    try:
        store.dismiss_label(body.name)
    except NotFound as e:
        raise HTTPException(404, str(e)) from e
    return get_pending_labels(user, store)


@router.get("/items/{item_id}", response_model=s.ItemOut, responses=NOT_FOUND, summary="one item")
def get_item(user: User, store: StoreDep, item_id: ItemId) -> s.ItemOut:
    return _item(store, item_id)


@router.get("/images/{item_id}", responses={**NOT_FOUND, 200: {"content": {"image/jpeg": {}, "image/png": {}}}},
            response_class=Response, summary="the item's image bytes")
def get_image(user: User, store: StoreDep, item_id: ItemId) -> Response:
    try:
        data, media_type = store.image(item_id)
    except NotFound as e:
        raise HTTPException(404, str(e)) from e
    # An example's image never changes, so the browser may keep it.
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=86400",
                                                          "X-Content-Type-Options": "nosniff"})


@router.post("/items/{item_id}/label", response_model=s.LabelOut, summary="label, accept, reject or skip",
             responses={**NOT_FOUND, 422: {"model": s.ErrorOut, "description": "invalid label or boxes"}})
def post_label(body: s.LabelIn, user: User, store: StoreDep,
               item_id: ItemId) -> s.LabelOut:
    boxes = [b.model_dump() for b in body.boxes] if body.boxes is not None else None
    try:
        store.label(item_id, user, body.action, body.label, boxes)
    except NotFound as e:
        raise HTTPException(404, str(e)) from e
    except InvalidLabel as e:
        raise HTTPException(422, str(e)) from e
    return s.LabelOut(ok=True, item=_item(store, item_id))


@router.post("/undo", response_model=s.UndoOut, summary="undo the caller's last action",
             responses={404: {"model": s.ErrorOut, "description": "nothing to undo"},
                        409: {"model": s.ErrorOut, "description": "someone changed the item since"}})
def post_undo(user: User, store: StoreDep) -> s.UndoOut:
    try:
        return s.UndoOut(item_id=store.undo(user))
    except NotFound as e:
        raise HTTPException(404, str(e)) from e
    except Conflict as e:
        raise HTTPException(409, str(e)) from e


@router.get("/dataset/stats", response_model=s.StatsOut, summary="counts per class and split, warnings")
def get_stats(user: User, store: StoreDep) -> s.StatsOut:
    return s.StatsOut.model_validate(store.stats())


@router.get("/fleet", response_model=s.FleetOut, summary="agents, their model and health")
def get_fleet(user: User, store: StoreDep) -> s.FleetOut:
    return s.FleetOut(agents=[s.AgentOut.model_validate(a) for a in store.fleet()])


@router.get("/dead_letters", response_model=s.DeadLettersOut, summary="refused messages: counts and the latest")
def get_dead_letters(user: User, store: StoreDep,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> s.DeadLettersOut:
    recent = [s.DeadLetterOut(topic=d.topic, reason=d.reason, detail=d.detail, size=d.size, at=d.at)
              for d in store.dead_letters(limit)]
    return s.DeadLettersOut(counts=store.dead_letter_counts(), recent=recent)


@router.get("/progress", response_model=s.ProgressOut, summary="corrected examples towards the next round")
def get_progress(user: User, store: StoreDep) -> s.ProgressOut:
    return s.ProgressOut(corrected_since_last_round=store.corrected_since_last_round(),
                         batch_size=store.project().batch_size)


_LOGIN_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": s.LoginIn.model_json_schema()},
    "application/x-www-form-urlencoded": {"schema": {**s.LoginIn.model_json_schema(), "additionalProperties": True,
                                                     "properties": {**s.LoginIn.model_json_schema()["properties"],
                                                                    "next": {"type": "string"}}}}}}}


@router.post("/login", response_model=s.LoginOut, summary="exchange the token for a session cookie",
             openapi_extra=_LOGIN_BODY,
             responses={401: {"model": s.ErrorOut}, 422: {"model": s.ErrorOut, "description": "no usable token"},
                        429: {"model": s.ErrorOut, "description": "too many failures"},
                        303: {"description": "form login: redirect to next"}})
async def post_login(request: Request) -> Response:
    form = "application/json" not in request.headers.get("content-type", "")
    try:
        data = dict(await request.form()) if form else await request.json()
        body = s.LoginIn.model_validate({k: v for k, v in data.items() if k != "next" and v != ""})
    except Exception as e:  # bad JSON, bad form, wrong shape: all the client's fault
        return JSONResponse({"detail": f"login needs a token: {type(e).__name__}"}, 422)
    auth: Auth = request.app.state.auth
    from .users import LoginRefused, login

    try:
        sid, session = login(request, body)  # accounts, personal tokens, the bootstrap token (users.py)
    except RateLimited:
        return JSONResponse({"detail": "too many failed logins; wait a minute"}, 429, headers={"Retry-After": "60"})
    except LoginRefused as e:
        return JSONResponse({"detail": e.detail}, e.status)
    nxt = safe_next(data.get("next"), "/")  # only local redirects: no open redirect through the login form
    resp: Response = RedirectResponse(nxt, 303) if form else JSONResponse(
        s.LoginOut(ok=True, user=session.user, csrf_token=session.csrf).model_dump())
    resp.set_cookie(COOKIE, sid, httponly=True, samesite="strict", secure=auth.cfg.cookie_secure,
                    max_age=int(auth.cfg.session_ttl_s), path="/")
    return resp


@router.post("/logout", summary="end the session")
def post_logout(request: Request, user: User) -> dict:
    request.app.state.auth.logout(request.cookies.get(COOKIE))
    resp = JSONResponse({"ok": True})
    resp.delete_cookie(COOKIE, path="/")
    return resp


@public.get("/healthz", response_model=s.HealthOut, summary="liveness (no authentication)")
def healthz(request: Request) -> s.HealthOut:
    svc = request.app.state.service
    connected = svc.collector.connected.is_set() if svc.collector else None
    reason = ""
    stuck = svc.collector.stuck_for() if svc.collector else 0.0
    if stuck and stuck > svc.collector.stuck_after_s:
        # A commit that keeps failing stops all ingest while the process looks alive: say so.
        reason = f"ingest commit stuck for {stuck:.0f} s (see the log)"
    body = s.HealthOut(ok=not reason, mqtt_connected=connected, queue_depth=svc.store.queue_depth(), reason=reason)
    return JSONResponse(body.model_dump(), status_code=503) if reason else body


def metrics_user(request: Request,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str | None:
    if request.app.state.service.config.http.metrics_public:
        return None
    return require_user(request, credentials)


@public.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics", responses=ERRORS)
def metrics(request: Request, user: Annotated[str | None, Depends(metrics_user)]) -> str:
    # prometheus-client exposition of this process's counters, the store, fleet, rollout, training, retention
    # and drift (trainer/server/metrics.py).
    return render_metrics(request.app.state.service)
