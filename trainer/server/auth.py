"""Authentication: a bearer token, or a session cookie from POST /api/login.

Wrong tokens count per client address, whether sent to /api/login or as a bearer token to any
route: ``http.login_max_failures`` within ``http.login_window_s`` block that address (429).

Cookie-authenticated requests that change state must carry ``X-CSRF-Token``
equal to the session's token (a cross-site form cannot read it); bearer
requests are exempt because browsers never attach them on their own.

Who the caller is and which role a route needs live in access.py and roles.py
(accounts, personal API tokens, the bootstrap token); this module keeps the
sessions and the failure windows.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import unicodedata
from collections import deque
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .config import HttpConfig

COOKIE = "edgeloop_session"
CSRF_HEADER = "X-CSRF-Token"
USER_HEADER = "X-User"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
MAX_SESSIONS = 10_000
MAX_TRACKED_CLIENTS = 10_000
MAX_NEXT_LEN = 2048
T = TypeVar("T")


def safe_next(target: object, fallback: str) -> str:
    """``target`` unchanged when it is a plain same-origin path, else ``fallback``.

    Nothing is stripped or repaired: browsers drop tabs and newlines from URLs and read ``\\`` as
    ``/``, so ``/\t/evil.example`` turns into ``//evil.example``. Any such character refuses the target.
    """
    if not isinstance(target, str) or not target or len(target) > MAX_NEXT_LEN:
        return fallback
    if any(c == "\\" or c.isspace() or unicodedata.category(c)[0] in "CZ" for c in target):
        return fallback  # control, format, separator and whitespace characters, backslashes
    try:
        parts = urlsplit(target)
    except ValueError:
        return fallback
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or target.startswith("//"):
        return fallback
    return target


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str
    expires: float
    kind: str = "account"  # or "bootstrap": signed in with the shared token (access.py)


class RateLimited(Exception):
    pass


class Auth:
    """The token, the live sessions and the login failure windows (all in memory)."""

    def __init__(self, token: str, cfg: HttpConfig) -> None:
        self._token = token.encode()
        self.cfg = cfg
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def token_ok(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._token)

    def _window(self, client: str, now: float) -> deque[float]:
        """The client's recent failures (lock held); RateLimited when there are too many."""
        if len(self._failures) > MAX_TRACKED_CLIENTS:  # many addresses: forget the quiet ones
            cutoff = now - self.cfg.login_window_s
            self._failures = {c: w for c, w in self._failures.items() if w and w[-1] >= cutoff}
        window = self._failures.setdefault(client, deque())
        while window and window[0] < now - self.cfg.login_window_s:
            window.popleft()
        if len(window) >= self.cfg.login_max_failures:
            raise RateLimited(client)
        return window

    def check_bearer(self, client: str, token: str, now: float | None = None) -> bool:
        """Whether ``token`` is right; a wrong one counts against ``client`` as a failed login does."""
        now = time.time() if now is None else now
        with self._lock:
            window = self._window(client, now)
            if not self.token_ok(token):
                window.append(now)
                return False
            if not window:
                self._failures.pop(client, None)
            return True

    def attempt(self, client: str, check: Callable[[], T | None], now: float | None = None) -> T | None:
        """``check()``'s result; None (a failure counted against ``client``) when it has none; RateLimited.

        ``check`` runs outside the lock: a password hash takes tens of milliseconds.
        """
        now = time.time() if now is None else now
        with self._lock:
            self._window(client, now)
        result = check()
        with self._lock:
            window = self._failures.setdefault(client, deque())
            if result is None:
                window.append(now)
            elif not window:
                self._failures.pop(client, None)
        return result

    def open_session(self, user: str, kind: str = "account", now: float | None = None) -> tuple[str, Session]:
        now = time.time() if now is None else now
        with self._lock:
            self._expire(now)
            sid = secrets.token_urlsafe(32)
            session = Session(user, secrets.token_urlsafe(32), now + self.cfg.session_ttl_s, kind)
            self._sessions[sid] = session
            return sid, session

    def login(self, client: str, token: str, user: str, now: float | None = None) -> tuple[str, Session] | None:
        """A new session id and session, None for a wrong token; RateLimited when blocked."""
        now = time.time() if now is None else now
        with self._lock:
            window = self._window(client, now)
            if not self.token_ok(token):
                window.append(now)
                return None
            self._failures.pop(client, None)
            self._expire(now)
            sid = secrets.token_urlsafe(32)
            session = Session(user, secrets.token_urlsafe(32), now + self.cfg.session_ttl_s, "bootstrap")
            self._sessions[sid] = session
            return sid, session

    def _expire(self, now: float) -> None:
        for sid in [s for s, v in self._sessions.items() if v.expires < now]:
            del self._sessions[sid]
        while len(self._sessions) >= MAX_SESSIONS:  # oldest first: dicts keep insertion order
            del self._sessions[next(iter(self._sessions))]

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._sessions.get(sid)
            if s is None or s.expires < time.time():
                return None
            return s

    def logout(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)

    def end_sessions(self, user: str, keep: str | None = None) -> int:
        """End every account session of ``user`` but ``keep`` (a new password); how many ended."""
        with self._lock:
            ended = [sid for sid, s in self._sessions.items() if s.user == user and s.kind == "account" and sid != keep]
            for sid in ended:
                del self._sessions[sid]
            return len(ended)

    def end_bootstrap_sessions(self) -> int:
        """End every session opened with the shared token (once it is retired); how many ended."""
        with self._lock:
            ended = [sid for sid, s in self._sessions.items() if s.kind == "bootstrap"]
            for sid in ended:
                del self._sessions[sid]
            return len(ended)


bearer = HTTPBearer(auto_error=False, description="a personal API token (edgeloop users), or the bootstrap "
                    "token (http.token or $EDGELOOP_SERVER_TOKEN) until an admin account exists")


def require_user(request: Request,
                 credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
    """FastAPI dependency: the caller's name once authenticated and allowed this route's role (roles.py).

    401 without valid credentials, 403 for too low a role or a missing CSRF token, 429 when rate-limited.
    """
    from .access import authorize

    return authorize(request, credentials).name


def client_address(request: Request) -> str:
    """The peer address failures are counted against (behind a proxy: the proxy's, see README)."""
    return request.client.host if request.client else "unknown"


def csrf_token(request: Request) -> str:
    """The CSRF token of the request's session ("" for bearer requests): put it in a meta tag."""
    session = request.app.state.auth.session(request.cookies.get(COOKIE))
    return session.csrf if session else ""


def current_user(request: Request) -> str | None:
    """The session's user without raising (pages use it to redirect to the login page).

    None too for a disabled account, or a bootstrap session once an admin account exists.
    """
    from .access import page_principal

    principal = page_principal(request)
    return principal.name if principal else None
