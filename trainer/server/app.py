"""create_app(config): the FastAPI application; its lifespan owns the store and the MQTT collector."""

from __future__ import annotations

import importlib
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import api, api_assist, api_data
from .auth import Auth, require_user
from .config import ServerConfig, resolve_token
from .guards import SecurityHeaders, StrictJson, data_error_handler, swagger_page, validation_error_handler
from .service import Service

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (413), declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _too_large(send, self.limit)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message
        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(send, self.limit)


class _TooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail":"request body over {limit} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _docs_behind_login(app: FastAPI, swagger: bool) -> None:
    """/openapi.json and /docs, for logged-in users only like everything else.

    /docs runs Swagger UI from a CDN inside this origin, so it is off unless ``http.api_docs`` is set.
    """

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(user: str = Depends(require_user)) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(user: str = Depends(require_user)):
        if not swagger:
            raise HTTPException(404, "the Swagger UI page is off (it loads from cdn.jsdelivr.net): set "
                                     "http.api_docs = true, or read /openapi.json")
        return swagger_page("/openapi.json", "edgeloop API")


ERROR_SCHEMA = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}


def _document_rate_limit(app: FastAPI) -> None:
    """Every authenticated operation can answer 401, and 429 (auth.py counts wrong tokens): say so once."""
    generate = app.openapi

    def openapi() -> dict:
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for op in operations.values():
                if not isinstance(op, dict) or not ("401" in op.get("responses", {}) or op.get("security")):
                    continue
                body = {"application/json": {"schema": ERROR_SCHEMA}}
                op["responses"].setdefault("401", {"description": "no or wrong credentials", "content": body})
                op["responses"].setdefault("429", {"content": body, "description": "too many failed "
                                                   "authentications from this address; see Retry-After"})
        return schema
    app.openapi = openapi  # type: ignore[method-assign]


def create_app(config: ServerConfig, token: str | None = None) -> FastAPI:
    """The app; ``token`` defaults to config/env (a generated one is logged)."""
    if token is None:
        token, generated = resolve_token(config)
        if generated:
            log.warning("no token configured; generated one for this run: %s", token)
    service = Service(config)
    app = FastAPI(title="edgeloop server", version="1", lifespan=_lifespan(service), docs_url=None, redoc_url=None,
                  openapi_url=None,
                  description="Error queue, labelling, dataset and fleet API of the edgeloop collector. "
                              "Authenticate with `Authorization: Bearer <token>` or a session from "
                              "`POST /api/login` (then send `X-CSRF-Token` on writes).")
    app.state.service = service
    app.state.auth = Auth(token, config.http)
    _include_routes(app, config)
    _document_rate_limit(app)
    _add_error_handlers(app)
    _add_middleware(app, config)
    return app


def _lifespan(service: Service):
    """The app's lifespan: the service (store, collector, rounds, publishing) runs while the app serves."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        # The publishing routes find these on app.state (trainer/publish/routes.py).
        app.state.registry, app.state.publishing, app.state.rounds = (
            service.registry, service.publishing, service.rounds)
        try:
            yield
        finally:
            service.stop()
    return lifespan


def _include_routes(app: FastAPI, config: ServerConfig) -> None:
    """Every router, in the order their routes are matched; the pages and static files last."""
    app.include_router(api.router)
    app.include_router(api_data.router)
    app.include_router(api_assist.router)
    from . import api_storage

    app.include_router(api_storage.router)  # disk usage and retention (issue 13)
    from trainer.fleet import routes as fleet_routes

    app.include_router(fleet_routes.api_router())  # commands and config bundles (issue 14)
    app.include_router(api.public)
    _docs_behind_login(app, config.http.api_docs)
    from trainer.publish import routes as publish_routes

    app.include_router(publish_routes.router)  # model downloads for agents: no token, published files only
    app.include_router(publish_routes.api_router(require_user))
    from trainer.drift import routes as drift_routes

    app.include_router(drift_routes.api_router(require_user))  # /api/drift (issue 14)
    from . import users

    app.include_router(users.api_router())  # /api/me, /api/users, /api/audit; roles in roles.py
    app.include_router(users.pages_router())
    try:
        pages = importlib.import_module("trainer.server.pages")
    except ModuleNotFoundError as e:
        if e.name != "trainer.server.pages":
            raise
    else:
        app.include_router(pages.router)
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    try:  # the PostgreSQL driver is optional (SQLite-only installs)
        from psycopg import DataError
    except ImportError:
        pass
    else:
        app.add_exception_handler(DataError, data_error_handler)


def _add_middleware(app: FastAPI, config: ServerConfig) -> None:
    """Added innermost first: a request passes SecurityHeaders, BodyLimit, StrictJson, then AuditLog."""
    from .access import AuditLog

    app.add_middleware(AuditLog)  # one audit row per write (roles.py names the action), after StrictJson
    app.add_middleware(StrictJson)  # inside BodyLimit: it reads bodies that were already bounded
    app.add_middleware(BodyLimit, limit=config.http.max_body_bytes)
    app.add_middleware(SecurityHeaders)  # outermost: the 413 of BodyLimit gets the headers too
