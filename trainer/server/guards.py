"""Request guards shared by every route: strict JSON bodies and validation errors that always render.

``StrictJson`` is ASGI middleware: it reads a JSON request body once (``BodyLimit`` outside it bounds
the size) and refuses, with the same 422 shape FastAPI uses for a JSON decode error, what Python's
``json`` module would accept but JSON does not allow or a response cannot carry: ``NaN``,
``Infinity``, numbers that overflow to infinity (``1e999``), lone UTF-16 surrogates (``"\\ud800"``),
invalid UTF-8 and nesting deep enough to exhaust the recursion limit. Every request, whatever its
method, also has its path (so its path parameters) and its query string's names and values checked:
a control character there (``%00``, ``%0a``, ``%7f``...) is a 422 (``loc`` ``["path"]`` or
``["query", name]``), as PostgreSQL refuses a NUL in text and no id, name or filter needs one.
Routes therefore never see such values, whichever router they come from. It runs on the event loop
and waits only on the request body. ``data_error_handler`` is the backstop: a database's refusal of a
value (psycopg's ``DataError``) is a 422, not a 500.

``validation_error_handler`` renders pydantic's errors without echoing the input: an input that
is large, binary or unencodable must not turn a 422 into a 500.

``SecurityHeaders`` gives every response that did not set its own (the pages do) a Content-Security-
Policy that allows nothing, and ``X-Content-Type-Options: nosniff``; ``swagger_page`` is /docs with a
policy that allows its CDN script and, by hash, its one inline script.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class _Refused(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:32]} is out of range")
    return value


def json_problem(body: bytes) -> str | None:
    """Why ``body`` is not strict, renderable JSON (None when it is)."""
    try:
        value = json.loads(body, parse_constant=_constant, parse_float=_finite)
        # Re-encoding as UTF-8 is what a response would do; a lone surrogate fails here.
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except _Refused as e:
        return str(e)
    except UnicodeError:
        return "text must be valid UTF-8 without lone surrogates"
    except RecursionError:
        return "JSON nested too deeply"
    except ValueError as e:  # JSONDecodeError, and int() over Python's digit limit
        return f"invalid JSON: {str(e)[:120]}"
    return None


def _is_json(scope: Scope) -> bool:
    ctype = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
    return ctype == b"application/json" or (ctype.startswith(b"application/") and ctype.endswith(b"+json"))


def _error(msg: str) -> dict:
    return {"detail": [{"type": "json_invalid", "loc": ["body"], "msg": msg}]}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def url_problem(scope: Scope) -> tuple[list, str] | None:
    """(loc, why) when the request's path or a query name or value holds a control character."""
    if _CONTROL.search(scope.get("path", "")):
        return ["path"], "the path must not contain control characters"
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="replace"):
        if _CONTROL.search(name) or _CONTROL.search(value):
            return ["query", _CONTROL.sub("?", name)[:64]], "query parameters must not contain control characters"
    return None


class StrictJson:
    """Refuse control characters in the path and query (any method) and non-standard JSON bodies (422)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (bad := url_problem(scope)) is not None:
            error = {"detail": [{"type": "value_error", "loc": bad[0], "msg": bad[1]}]}
            return await JSONResponse(error, 422)(scope, receive, send)
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS or not _is_json(scope):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = json_problem(body) if body else None
        if problem is not None:
            return await JSONResponse(_error(problem), 422)(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        await self.app(scope, replay, send)


def _plain(value: Any) -> Any:
    """A JSON-safe copy of an error detail: finite numbers as they are, anything else as short text."""
    if value is None or isinstance(value, bool) or (isinstance(value, int) and abs(value) < 2**63):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    text = value if isinstance(value, str) else ascii(value)
    return text[:200].encode("utf-8", "backslashreplace").decode("utf-8")


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 shape (type, loc, msg, ctx) without the ``input`` it would echo."""
    errors = []
    for e in exc.errors():
        out = {"type": _plain(e.get("type", "")), "loc": [_plain(p) for p in e.get("loc", ())],
               "msg": _plain(str(e.get("msg", "")))}
        if isinstance(e.get("ctx"), dict):
            out["ctx"] = {str(k): _plain(v) for k, v in e["ctx"].items()}
        errors.append(out)
    return JSONResponse({"detail": errors}, 422)


async def data_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The database refused a value (psycopg ``DataError``: a NUL, an out-of-range number): a 422."""
    return JSONResponse({"detail": [{"type": "value_error", "loc": [],
                                     "msg": "the database refused a value of this request"}]}, 422)


DEFAULT_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SWAGGER_CDN = "https://cdn.jsdelivr.net"


class SecurityHeaders:
    """Add a deny-all CSP and nosniff to responses that carry none (HTML pages set their own CSP)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _v in headers}
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", DEFAULT_CSP))
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)
        await self.app(scope, receive, with_headers)


def swagger_page(openapi_url: str, title: str) -> HTMLResponse:
    """FastAPI's Swagger UI page under a CSP: its CDN, and its one inline script by hash."""
    page = get_swagger_ui_html(openapi_url=openapi_url, title=title)
    inline = re.findall(rb"<script>(.*?)</script>", page.body, re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in inline)
    page.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src {hashes} {SWAGGER_CDN}; style-src {SWAGGER_CDN} 'unsafe-inline';"
        f" img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; base-uri 'none';"
        " form-action 'none'; frame-ancestors 'none'")
    page.headers["Cache-Control"] = "no-store"
    return page
