"""The review UI's HTML pages and their static assets.

The pages are thin server-rendered shells; the data comes from the REST API
(``/api/...``) through a little plain JavaScript in ``static/``, so whatever
the UI does can be scripted the same way. ``router`` is included by the app.

Static files are served from a fixed table built from the package directory,
never from a path in the request, and their URLs carry a content hash so a
browser may cache them for good.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from trainer.server import auth

HERE = Path(__file__).resolve().parent
router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class NavItem:
    key: str
    title: str
    href: str


NAV: tuple[NavItem, ...] = (
    NavItem("review", "Review", "/review"),
    NavItem("dataset", "Dataset", "/dataset"),
    NavItem("fleet", "Fleet", "/fleet"),
    NavItem("drift", "Drift", "/drift"),
    NavItem("models", "Models", "/models"),
    NavItem("users", "Users", "/users"),  # admin only: _nav drops what the caller's role may not open
    NavItem("audit", "Audit", "/audit"),
)


def _nav(request: Request) -> list[NavItem]:
    from .access import page_principal
    from .roles import required

    principal = page_principal(request)
    return [n for n in NAV if principal is not None and principal.role >= required("GET", n.href)]


CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
       " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

# (query parameter, title, datalist the review page fills from the API)
REVIEW_FILTERS: tuple[tuple[str, str, str], ...] = (
    ("camera", "Camera", "cameras-list"),
    ("agent", "Agent", "agents-list"),
    ("model_version", "Model version", "versions-list"),
    ("predicted", "Predicted class", "labels-list"),
    ("strategy", "Strategy", ""),
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    digest: str


@lru_cache(maxsize=1)
def _assets() -> dict[str, Asset]:
    out: dict[str, Asset] = {}
    for path in sorted((HERE / "static").iterdir()):
        if path.is_file() and not path.name.startswith("."):
            body = path.read_bytes()
            media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if media.startswith("text/") or media.endswith("javascript"):
                media += "; charset=utf-8"
            out[path.name] = Asset(body, media, hashlib.sha256(body).hexdigest()[:12])
    return out


def static_url(name: str) -> str:
    asset = _assets().get(name)
    if asset is None:
        raise KeyError(f"no static asset named {name!r}")
    return f"/static/{name}?v={asset.digest}"


@lru_cache(maxsize=1)
def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["static_url"] = static_url
    return templates


@router.get("/static/{name}")
def static(name: str, v: str | None = None) -> Response:
    """A bundled CSS/JS file by name; public, because the login page needs them."""
    asset = _assets().get(name)
    if asset is None:
        raise HTTPException(status_code=404, detail="no such asset")
    # A URL with the current hash never changes content: cache it for good.
    cache = "public, max-age=31536000, immutable" if v == asset.digest else "no-cache"
    return Response(asset.body, media_type=asset.media_type,
                    headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"})


def _safe_next(target: str | None) -> str:
    """Only local paths, so the login page cannot be used as an open redirect."""
    return auth.safe_next(target, "/review")


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def _render(request: Request, template: str, page: str, user: str | None, **context) -> HTMLResponse:
    response = _templates().TemplateResponse(request, template, {
        "page": page, "user": user, "nav": _nav(request), "csrf": auth.csrf_token(request), **context,
    })
    # Pages show data behind a login: never keep them in shared caches, never frame them.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    # Only our own scripts and styles ever run: defence in depth against an
    # injected label or agent name (templates and JS already escape them).
    response.headers["Content-Security-Policy"] = CSP
    return response


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/review", status_code=303)


@router.get("/login")
def login(request: Request, next_: Annotated[str | None, Query(alias="next")] = None) -> Response:
    target = _safe_next(next_)
    if auth.current_user(request) is not None:
        return RedirectResponse(target, status_code=303)
    return _render(request, "login.html", "login", None, next=target)


@router.get("/review")
def review(request: Request) -> Response:
    user = auth.current_user(request)
    if user is None:
        return _login_redirect(request)
    filters = [{"key": k, "title": t, "list": dl, "value": request.query_params.get(k, "")}
               for k, t, dl in REVIEW_FILTERS]
    return _render(request, "review.html", "review", user, filters=filters,
                   any_filter=any(f["value"] for f in filters),
                   assist=getattr(request.app.state.service, "assist", None) is not None)


@router.get("/dataset")
def dataset(request: Request) -> Response:
    user = auth.current_user(request)
    if user is None:
        return _login_redirect(request)
    return _render(request, "dataset.html", "dataset", user)


@router.get("/drift")
def drift(request: Request) -> Response:
    user = auth.current_user(request)
    if user is None:
        return _login_redirect(request)
    return _render(request, "drift.html", "drift", user)


@router.get("/fleet")
def fleet(request: Request) -> Response:
    user = auth.current_user(request)
    if user is None:
        return _login_redirect(request)
    return _render(request, "fleet.html", "fleet", user)


def _models_context(request: Request) -> dict:
    """What the models page needs from the server's config: the model and a round's epoch budget."""
    config = getattr(getattr(request.app.state, "service", None), "config", None)
    rounds = getattr(config, "rounds", None)
    publish = getattr(config, "publish", None)
    epochs = 0
    if rounds is not None:
        from trainer.train.config import TrainConfig

        epochs = TrainConfig.model_validate(rounds.train).epochs  # validated at start-up already
    name = rounds.model_name if rounds is not None else publish.model_name if publish is not None else ""
    return {"model_name": name, "max_epochs": epochs, "rounds_on": rounds is not None,
            "publish_on": publish is not None}


@router.get("/models")
def models(request: Request) -> Response:
    user = auth.current_user(request)
    if user is None:
        return _login_redirect(request)
    return _render(request, "models.html", "models", user, **_models_context(request))
