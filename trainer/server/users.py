"""Accounts over HTTP: sign-in, ``/api/me``, ``/api/users`` and ``/api/audit``, and the Users and Audit pages.

Every account change runs in one store transaction together with its audit
row, after every check (trainer/store/accounts.py), so a refused change
leaves nothing behind; the refusal itself is then audited on its own. The
roles these routes need are in roles.py like every other route's. Request
handlers run on FastAPI's worker threads; password hashing (argon2) happens
before the write transaction, never inside it.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from trainer.store import accounts, audit

from .access import BOOTSTRAP_RETIRED, Principal, bootstrap_open, client_address, page_principal, store_of
from .auth import require_user
from .deps import StoreDep, User, error_responses

UserName = Annotated[str, Path(pattern=accounts.NAME_RE.pattern, description="the account name")]
RoleName = Literal["viewer", "reviewer", "publisher", "admin"]


ERRORS = error_responses({404: "no such user",
                          409: "the name is taken, or the change would leave no enabled admin"},
                         forbidden="the caller's role is too low, or a missing CSRF token")


class LoginRefused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=accounts.NAME_RE.pattern)
    role: RoleName
    password: str | None = Field(None, min_length=accounts.MIN_PASSWORD, max_length=accounts.MAX_PASSWORD,
                                 description="omit for an automation account that only uses its API token")


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: RoleName


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(min_length=accounts.MIN_PASSWORD, max_length=accounts.MAX_PASSWORD)


def _principal(request: Request, _name: User) -> Principal:
    return request.state.principal


Caller = Annotated[Principal, Depends(_principal)]


# -- sign-in --------------------------------------------------------------------------------------

def _audit_login(request: Request, actor: str, via: str, status: int, detail: dict) -> None:
    store = store_of(request)
    store.db.write(lambda db: audit.record(db, actor, via, client_address(request), "login", "/api/login",
                                           status, detail))


def login(request: Request, body) -> tuple[str, Any]:
    """A new session for an account's user+password, a personal token, or the bootstrap token.

    LoginRefused (401/422) otherwise; auth.RateLimited once the address failed too often.
    """
    auth, store = request.app.state.auth, store_of(request)
    client = client_address(request)
    if body.password is not None:
        if not body.user:
            raise LoginRefused(422, "a password sign-in needs the user name too")
        account = auth.attempt(client, lambda: accounts.verify_password(store.db.read(), body.user, body.password))
        if account is None:
            _audit_login(request, body.user, "session", 401, {"reason": "wrong user name or password"})
            raise LoginRefused(401, "wrong user name or password")
        return _account_session(request, account, "session")
    if not body.token:
        raise LoginRefused(422, "sign in with a user name and password, or a token")
    from .access import identify_token

    found = auth.attempt(client, lambda: identify_token(auth, store, body.token))
    if found == "bootstrap":
        if not bootstrap_open(store):
            raise LoginRefused(401, BOOTSTRAP_RETIRED)
        name = body.user or "bootstrap"  # before any admin account exists nobody has a name yet
        _audit_login(request, name, "bootstrap", 200, {})
        return auth.open_session(name, "bootstrap")
    if found is None or found == "rotated":
        detail = "this API token was replaced by a newer one" if found else "wrong token"
        _audit_login(request, body.user or "?", "token", 401, {"reason": detail})
        raise LoginRefused(401, detail)
    return _account_session(request, found, "token")


def _account_session(request: Request, account, via: str) -> tuple[str, Any]:
    if account.disabled:
        _audit_login(request, account.name, via, 401, {"reason": "disabled"})
        raise LoginRefused(401, f"account {account.name} is disabled")
    _audit_login(request, account.name, via, 200, {})
    return request.app.state.auth.open_session(account.name)


# -- changes --------------------------------------------------------------------------------------

def _change(request: Request, caller: Principal, action: str, target: str, fn: Callable, detail: dict) -> Any:
    """Run ``fn(db)`` and its audit row in one transaction; a refusal is audited alone, then raised."""
    store = store_of(request)
    client = client_address(request)

    def tx(db):
        result = fn(db)
        audit.record(db, caller.name, caller.via, client, action, target, 200, detail)
        return result
    try:
        return store.db.write(tx)
    except accounts.AccountError as e:
        store.db.write(lambda db: audit.record(db, caller.name, caller.via, client, action, target, e.status,
                                               {**detail, "refused": e.detail}))
        raise HTTPException(e.status, e.detail) from e


def api_router() -> APIRouter:
    """``/api/me``, ``/api/users`` and ``/api/audit``; roles.py says who may call each."""
    api = APIRouter(prefix="/api", tags=["users"], dependencies=[Depends(require_user)], responses=ERRORS)
    _account_routes(api)
    _credential_routes(api)
    _audit_routes(api)
    return api


def _account_routes(api: APIRouter) -> None:
    """The caller, the accounts, and the changes to an account's existence, role and state."""

    @api.get("/me", summary="the caller: name, role and how they signed in")
    def me(caller: Caller) -> dict[str, Any]:
        return {"name": caller.name, "role": caller.role.label, "via": caller.via}

    @api.get("/users", summary="every account (no secrets)")
    def list_users(store: StoreDep) -> list[dict[str, Any]]:
        return [a.to_dict() for a in accounts.all_accounts(store.db.read())]

    @api.post("/users", status_code=201, summary="add an account; its API token is in the answer, once")
    def add_user(request: Request, body: UserIn, caller: Caller) -> dict[str, Any]:
        hashed = accounts.hash_password(body.password) if body.password else None
        token = _change(request, caller, "user_add", body.name,
                        lambda db: accounts.create(db, body.name, body.role, hashed), {"role": body.role})
        return {**accounts.get(store_of(request).db.read(), body.name).to_dict(), "token": token}

    @api.post("/users/{name}/role", summary="change an account's role (never the last enabled admin's)")
    def set_role(request: Request, name: UserName, body: RoleIn, caller: Caller) -> dict[str, Any]:
        return _change(request, caller, "user_role", name, lambda db: accounts.set_role(db, name, body.role),
                       {"role": body.role}).to_dict()

    @api.post("/users/{name}/disable", summary="disable an account: its sessions and token stop working at once")
    def disable(request: Request, name: UserName, caller: Caller) -> dict[str, Any]:
        out = _change(request, caller, "user_disable", name, lambda db: accounts.set_disabled(db, name, True),
                      {}).to_dict()
        request.app.state.auth.end_sessions(name)  # for good: enabling the account again does not revive them
        return out

    @api.post("/users/{name}/enable", summary="enable a disabled account")
    def enable(request: Request, name: UserName, caller: Caller) -> dict[str, Any]:
        return _change(request, caller, "user_enable", name, lambda db: accounts.set_disabled(db, name, False),
                       {}).to_dict()


def _credential_routes(api: APIRouter) -> None:
    """An account's API token and password: each change ends what the old secret opened."""

    @api.post("/users/{name}/rotate-token", summary="a new API token (in the answer, once); the old one stops")
    def rotate(request: Request, name: UserName, caller: Caller) -> dict[str, Any]:
        token = _change(request, caller, "user_rotate_token", name, lambda db: accounts.rotate_token(db, name), {})
        return {"name": name, "token": token}

    @api.post("/users/{name}/password", summary="set an account's password")
    def password(request: Request, name: UserName, body: PasswordIn, caller: Caller) -> dict[str, Any]:
        hashed = accounts.hash_password(body.password)
        out = _change(request, caller, "user_password", name, lambda db: accounts.set_password(db, name, hashed),
                      {}).to_dict()
        from .auth import COOKIE

        # Whoever knew the old password is signed out; the caller changing their own keeps this session.
        request.app.state.auth.end_sessions(name, keep=request.cookies.get(COOKIE))
        return out


def _audit_routes(api: APIRouter) -> None:
    """The audit log that every write and refused change leaves (access.AuditLog, ``_change``)."""

    @api.get("/audit", summary="the audit log, newest first, with filters; page with before_id")
    def get_audit(store: StoreDep,
                  actor: Annotated[str | None, Query(max_length=64)] = None,
                  action: Annotated[str | None, Query(max_length=64)] = None,
                  since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
                  until: Annotated[float | None, Query(ge=0, le=1e11)] = None,
                  failed: bool | None = None,
                  before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
        db = store.db.read()
        rows, total = audit.query(db, audit.AuditQuery(actor, action, since, until, failed, before_id, limit))
        return {"entries": rows, "total": total, "actions": audit.actions(db),
                "next_before_id": rows[-1]["id"] if len(rows) == limit else None}


# -- pages ----------------------------------------------------------------------------------------

def pages_router() -> APIRouter:
    from . import pages

    router = APIRouter(include_in_schema=False)

    def page(request: Request, template: str, key: str) -> Response:
        principal = page_principal(request)
        if principal is None:
            return pages._login_redirect(request)
        try:
            require_user(request, None)  # the role check of roles.py, as for the API
        except HTTPException as e:
            raise HTTPException(e.status_code, e.detail) from None
        return pages._render(request, template, key, principal.name)

    @router.get("/users")
    def users_page(request: Request) -> Response:
        return page(request, "users.html", "users")

    @router.get("/audit")
    def audit_page(request: Request) -> Response:
        return page(request, "audit.html", "audit")

    return router
