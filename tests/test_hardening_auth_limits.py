"""Finding 9 of issue 11 (HTTP side): failed bearer tokens are rate-limited on every route, and the
Swagger UI page is off unless configured (it loads its code from a CDN), with a CSP when on.

Before, only POST /api/login counted failures: a script could try tokens on any other route forever.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from trainer.server.app import create_app
from trainer.server.auth import Auth, RateLimited
from trainer.server.config import HttpConfig
from test_api_auth import BEARER, TOKEN, make_config

WRONG = {"Authorization": "Bearer wrong-guess-0123456789"}


@pytest.fixture
def client(tmp_path: Path):
    with TestClient(create_app(make_config(tmp_path, login_max_failures=3), TOKEN)) as c:
        yield c


def test_wrong_bearer_tokens_are_rate_limited_on_every_route(client: TestClient) -> None:
    routes = ["/api/project", "/api/queue", "/metrics"]
    for path in routes:
        assert client.get(path, headers=WRONG).status_code == 401
    for path in routes + ["/api/fleet"]:
        r = client.get(path, headers=WRONG)
        assert r.status_code == 429 and r.headers["retry-after"] == "60" and isinstance(r.json()["detail"], str)
    # Blocked means blocked: the right token from that address waits too, as on the login route,
    # which shares the same window.
    assert client.get("/api/project", headers=BEARER).status_code == 429
    assert client.post("/api/login", json={"token": TOKEN}).status_code == 429
    # A request without credentials is no guess and is not counted (or refused as one).
    assert client.get("/api/project").status_code == 401


def test_failures_expire_and_success_clears_them() -> None:
    auth = Auth(TOKEN, HttpConfig(login_max_failures=2, login_window_s=60))
    assert not auth.check_bearer("10.0.0.1", "nope", now=1000.0)
    assert not auth.check_bearer("10.0.0.1", "nope", now=1001.0)
    with pytest.raises(RateLimited):
        auth.check_bearer("10.0.0.1", TOKEN, now=1002.0)
    assert auth.check_bearer("10.0.0.2", TOKEN, now=1002.0)  # another address is not affected
    assert auth.check_bearer("10.0.0.1", TOKEN, now=1062.0)  # the window has passed
    assert not auth.check_bearer("10.0.0.1", "nope", now=1063.0)
    assert auth.check_bearer("10.0.0.1", TOKEN, now=1064.0)  # one failure only: not blocked


def test_swagger_ui_is_off_unless_configured(client: TestClient) -> None:
    r = client.get("/docs", headers=BEARER)
    assert r.status_code == 404 and "http.api_docs" in r.json()["detail"]
    assert client.get("/openapi.json", headers=BEARER).status_code == 200  # the schema needs no CDN


def test_swagger_ui_when_configured_runs_under_a_csp(tmp_path: Path) -> None:
    with TestClient(create_app(make_config(tmp_path, api_docs=True), TOKEN)) as c:
        r = c.get("/docs", headers=BEARER)
        assert r.status_code == 200
        csp = r.headers["content-security-policy"]
        [script_src] = [d for d in csp.split(";") if d.strip().startswith("script-src")]
        assert "'unsafe-inline'" not in script_src and "default-src 'none'" in csp
        # The page's one inline script is allowed by its hash, nothing else inline.
        [inline] = re.findall(r"<script>(.*?)</script>", r.text, re.S)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in script_src


def test_every_response_carries_a_csp(client: TestClient) -> None:
    for path, headers in (("/api/project", BEARER), ("/healthz", {}), ("/api/project", {}), ("/login", {})):
        r = client.get(path, headers=headers)
        assert "default-src" in r.headers.get("content-security-policy", ""), path
        assert r.headers.get("x-content-type-options") == "nosniff", path
