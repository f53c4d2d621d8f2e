"""Finding 2 of issue 11: the sign-in ``next`` target may only be a same-origin path.

Browsers drop tab, CR and LF from URLs and read a backslash as a slash, so ``/\t/evil.example`` becomes
``//evil.example`` (another origin). Both the form login (POST /api/login) and the login page
(GET /login, which puts ``next`` into the form) must refuse such targets instead of cleaning them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from trainer.server.app import create_app
from test_api_auth import TOKEN, make_config

EVIL = ["/\t/evil.example/x", "/\n/evil.example/x", "/\r/evil.example/x", "/\r\n/evil.example", "//evil.example",
        "/\\evil.example", "\\\\evil.example", "/\\/evil.example", "https://evil.example/", "javascript:alert(1)",
        "http:/evil.example", " /review", "/review ", "/re\x00view", "/\x0b/evil.example", "/\u2028/evil.example",
        "evil.example", "", "/" + "a" * 3000, "/\x7f/evil"]
GOOD = ["/", "/review", "/review?camera=gate&agent=a-1", "/models#history", "/dataset/%2F%2Fx"]


@pytest.fixture
def client(tmp_path: Path):
    with TestClient(create_app(make_config(tmp_path), TOKEN)) as c:
        yield c


@pytest.mark.parametrize("target", EVIL)
def test_unsafe_targets_fall_back(target: str) -> None:
    from trainer.server.auth import safe_next

    assert safe_next(target, "/fallback") == "/fallback"


@pytest.mark.parametrize("target", GOOD)
def test_local_paths_are_kept_unchanged(target: str) -> None:
    from trainer.server.auth import safe_next

    assert safe_next(target, "/fallback") == target


def test_form_login_never_redirects_off_site(client: TestClient) -> None:
    for target in EVIL:
        r = client.post("/api/login", data={"token": TOKEN, "next": target}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/", (target, r.headers.get("location"))
    r = client.post("/api/login", data={"token": TOKEN, "next": "/fleet?x=1"}, follow_redirects=False)
    assert r.headers["location"] == "/fleet?x=1"


def test_login_page_puts_only_local_paths_in_the_form(client: TestClient) -> None:
    # The raw query of the report: %09 (tab), %0A, %0D, backslashes, two slashes, schemes.
    for raw in ("/%09/other-host/x", "/%0A/other-host/x", "/%0D/other-host/x"):
        r = client.get(f"/login?next={raw}")  # control characters in a query are refused (guards.py)
        assert r.status_code == 422 and "other-host" not in r.text, raw
    for raw in ("/%5Cother-host", "//other-host", "/%5C/other-host", "https:other-host", "%20/review"):
        page = client.get(f"/login?next={raw}").text
        assert 'name="next" value="/review"' in page, raw
        assert "other-host" not in page, raw
