"""Who is calling, with which role, and whether this route allows it; the audit of every write.

``authorize`` is what ``auth.require_user`` runs for every authenticated route:

- a bearer token is either the shared bootstrap token (``http.token``: admin,
  only while no enabled admin account exists) or a person's API token (its
  SHA-256 is looked up; a rotated-out token and a disabled account answer a
  401 that says so). A wrong token counts against the client address like a
  failed login (auth.py's window, 429 past the limit);
- a session cookie names an account (looked up on every request, so a role
  change or a disabled account takes effect at once) or, for a bootstrap
  session, acts as admin while the bootstrap is still open;
- the route's role comes from roles.py's table; too low a role answers 403.

The caller (a ``Principal``) is left on ``request.state.principal``; ``AuditLog``
(ASGI middleware) appends one audit row per state-changing request that got
that far, with its final status, after the response is sent (on a worker
thread: the event loop never waits on the database). Routes that write their
own audit row in the same transaction as their change (accounts) set
``request.state.audited``.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass

import anyio
from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol.topics import ID_RE
from trainer.store import accounts, audit

from .roles import Role, required, rule_for

log = logging.getLogger(__name__)
BOOTSTRAP_NAME = "bootstrap"
SECRET_KEYS = {"password", "token", "new_password", "secret"}
MAX_AUDITED_BODY = 16 * 1024


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    via: str  # "session", "token" or "bootstrap"


def _unauthorized(detail: str = "authentication required: Bearer token or a session from POST /api/login"):
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _rate_limited(window_s: float) -> HTTPException:
    return HTTPException(429, "too many failed authentications from this address; wait and retry",
                         headers={"Retry-After": str(int(window_s))})


def store_of(request: Request):
    return request.app.state.service.store


def bootstrap_open(store) -> bool:
    """The shared token works only until the first enabled admin account exists, and never after.

    Retired for good (a flag in the store) so that losing every admin later does not silently turn
    the shared token back into an admin credential; ``edgeloop users`` on the server's machine recovers.
    """
    db = store.db.read()
    if accounts.bootstrap_retired(db):
        return False
    if accounts.active_admins(db) == 0:
        return True
    store.db.write(accounts.retire_bootstrap)  # an admin made before the flag existed
    return False


BOOTSTRAP_RETIRED = ("the shared bootstrap token is retired: an admin account exists; sign in with an account "
                     "or use a personal API token (edgeloop users rotate-token NAME)")


def _account_principal(account, via: str) -> Principal:
    if account.disabled:
        raise _unauthorized(f"account {account.name} is disabled")
    return Principal(account.name, Role.parse(account.role), via)


def identify_token(auth, store, token: str):
    """What a token is: "bootstrap", an Account, "rotated" (a replaced personal token) or None (wrong)."""
    if auth.token_ok(token):
        return "bootstrap"
    found, rotated = accounts.by_token(store.db.read(), token)
    return found if found is not None else ("rotated" if rotated else None)


def _from_bearer(request: Request, token: str) -> Principal:
    from .auth import RateLimited

    auth = request.app.state.auth
    store = store_of(request)
    try:
        found = auth.attempt(client_address(request), lambda: identify_token(auth, store, token))
    except RateLimited:
        raise _rate_limited(auth.cfg.login_window_s) from None
    if found == "bootstrap":
        if not bootstrap_open(store):
            raise _unauthorized(BOOTSTRAP_RETIRED)
        # Before any admin account exists, scripts using the bootstrap token may say whom they act for.
        named = request.headers.get("X-User", BOOTSTRAP_NAME)
        return Principal(named if ID_RE.match(named) else BOOTSTRAP_NAME, Role.ADMIN, "bootstrap")
    if found == "rotated":
        raise _unauthorized("this API token was replaced by a newer one (rotate-token): use the new token")
    if found is None:
        raise _unauthorized()
    return _account_principal(found, "token")


def _from_session(request: Request) -> Principal:
    from .auth import COOKIE, CSRF_HEADER, SAFE_METHODS

    auth = request.app.state.auth
    session = auth.session(request.cookies.get(COOKIE))
    if session is None:
        raise _unauthorized()
    principal = session_principal(request, session)
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header")
    return principal


def session_principal(request: Request, session) -> Principal:
    """The principal of a live session; 401 when its account is gone or disabled or the bootstrap closed."""
    store = store_of(request)
    if getattr(session, "kind", "account") == "bootstrap":
        if not bootstrap_open(store):
            request.app.state.auth.end_bootstrap_sessions()  # ended, not just refused while an admin exists
            raise _unauthorized(BOOTSTRAP_RETIRED)
        return Principal(session.user, Role.ADMIN, "bootstrap")
    account = accounts.get(store.db.read(), session.user)
    if account is None:
        raise _unauthorized(f"account {session.user} no longer exists")
    return _account_principal(account, "session")


def authorize(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The caller allowed on this route (see the module docstring), or 401 / 403 / 429."""
    if credentials is not None:
        principal = _from_bearer(request, credentials.credentials)
    else:
        principal = _from_session(request)
    request.state.principal = principal
    needed = required(request.method, request.url.path)
    if principal.role < needed:
        raise HTTPException(403, f"this needs the {needed.label} role; {principal.name} is a {principal.role.label}")
    return principal


def page_principal(request: Request) -> Principal | None:
    """For HTML pages: the session's principal, or None (the page redirects to the login page)."""
    from .auth import COOKIE

    session = request.app.state.auth.session(request.cookies.get(COOKIE))
    if session is None:
        return None
    try:
        return session_principal(request, session)
    except HTTPException:
        return None


def client_address(request: Request) -> str:
    """The peer address (behind a proxy: the proxy's, see README)."""
    return request.client.host if request.client else "unknown"


# -- the audit log --------------------------------------------------------------------------------

MAX_BODY_FIELDS = 16


def _detail(body: bytes, path_params: dict, refused: bool) -> dict:
    """``{"path": the path parameters, "body": its top-level scalar JSON fields}``, secrets left out.

    Under separate keys, so a body field cannot pose as the path's target. Bounded: 16 fields, text
    cut to 200 characters. A refused request (401/403) keeps only the names of its body's fields.
    """
    out: dict = {"path": {str(k)[:64]: str(v)[:200] for k, v in list(path_params.items())[:8]}}
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        return out
    keys = [k for k in list(data)[:MAX_BODY_FIELDS] if k not in SECRET_KEYS]
    if refused:
        out["body_fields"] = [k[:64] for k in keys]
        return out
    fields: dict = {}
    for k in keys:
        v = data[k]
        if isinstance(v, (str, int, float, bool)) or v is None:
            fields[k[:64]] = v[:200] if isinstance(v, str) else v
        elif isinstance(v, (list, dict)):
            fields[k[:64]] = f"<{type(v).__name__} of {len(v)}>"
    out["body"] = fields
    return out


def write_audit(store, principal_name: str, via: str, client: str, action: str, target: str, status: int,
                detail: dict) -> None:
    if status in (401, 403):  # one row per caller, action and minute, however often it is retried
        store.db.write(lambda db: audit.record_refusal(db, principal_name, via, client, action, target, status,
                                                       detail))
        return
    store.db.write(lambda db: audit.record(db, principal_name, via, client, action, target, status, detail))


class AuditLog:
    """ASGI middleware: one audit row per authenticated write (and per audited read, e.g. exports)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rule = rule_for(scope["method"], scope["path"])
        if rule is None or rule.audit is None:
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})
        body = bytearray()
        status = 500

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < MAX_AUDITED_BODY:
                body.extend(message.get("body", b"")[:MAX_AUDITED_BODY - len(body)])
            return message

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, recording_receive, recording_send)
        finally:
            await self._record(scope, rule.audit, status, bytes(body))

    @staticmethod
    async def _record(scope: Scope, action: str, status: int, body: bytes) -> None:
        state = scope.get("state") or {}
        principal: Principal | None = state.get("principal")
        if principal is None or state.get("audited"):
            return  # never authenticated (401): nobody to name
        app = scope.get("app")
        store = app.state.service.store
        client = scope["client"][0] if scope.get("client") else "unknown"
        detail = _detail(body, scope.get("path_params") or {}, status in (401, 403))
        try:
            await anyio.to_thread.run_sync(write_audit, store, principal.name, principal.via, client, action,
                                           scope["path"], status, detail)
        except Exception:  # the request already happened: say loudly that its record is missing
            log.exception("audit row of %s %s by %s not written", action, scope["path"], principal.name)
