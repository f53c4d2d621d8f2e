"""The HTML pages over real HTTP (no browser): login redirects, CSRF meta, static assets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from trainer.server.app import create_app
from trainer.server.config import ServerConfig

TOKEN = "pages-test-token-0123456789abcdef"
PAGES = ("/review", "/dataset", "/fleet", "/models", "/drift", "/users", "/audit")


@pytest.fixture
def client(tmp_path: Path):
    config = ServerConfig.model_validate({
        "mqtt": {"enabled": False}, "store": {"data_dir": str(tmp_path / "data")},
        "project": {"task": "classification", "labels": ["cat", "dog"]}})
    with TestClient(create_app(config, token=TOKEN), base_url="http://127.0.0.1") as c:
        yield c


def _login(client: TestClient) -> None:
    r = client.post("/api/login", json={"token": TOKEN, "user": "ana"})
    assert r.status_code == 200, r.text


def test_pages_redirect_to_login_with_next(client: TestClient) -> None:
    for path in PAGES:
        r = client.get(path + "?camera=gate", follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=" + path.replace("/", "%2F") + "%3Fcamera%3Dgate"
    assert client.get("/", follow_redirects=False).headers["location"] == "/review"


def test_login_page_keeps_next_local(client: TestClient) -> None:
    page = client.get("/login?next=/dataset").text
    assert 'name="next" value="/dataset"' in page
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        page = client.get("/login", params={"next": evil}).text
        assert 'name="next" value="/review"' in page, evil


def test_form_login_then_pages_render_with_csrf(client: TestClient) -> None:
    r = client.post("/api/login", data={"token": TOKEN, "user": "ana", "next": "/fleet"}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/fleet")
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in r.headers["content-security-policy"]
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', r.text)
        assert csrf and len(csrf.group(1)) > 20
        assert f'href="{path}" aria-current="page"' in r.text
        assert "signed in as ana" in r.text
    # Logged in, the login page sends the user on.
    assert client.get("/login?next=/dataset", follow_redirects=False).headers["location"] == "/dataset"


def test_review_filters_are_echoed_escaped(client: TestClient) -> None:
    _login(client)
    page = client.get("/review", params={"camera": 'gate"><script>', "strategy": "margin"}).text
    assert 'value="gate&#34;&gt;&lt;script&gt;"' in page
    assert 'name="strategy" value="margin"' in page
    assert "<script>" not in page.split("<body")[1].replace("<script src=", "")


def test_static_assets_by_name_only(client: TestClient) -> None:
    page = client.get("/login").text
    urls = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert any(u.startswith("/static/app.css?v=") for u in urls) and any("common.js" in u for u in urls)
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200 and "immutable" in r.headers["cache-control"], url
    r = client.get("/static/review.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert r.headers["cache-control"] == "no-cache"
    for bad in ("/static/nope.js", "/static/..%2Fpages.py", "/static/%2e%2e/auth.py", "/static/../pages.py"):
        assert client.get(bad).status_code == 404, bad


def test_every_static_file_is_referenced(client: TestClient) -> None:
    """No dead assets: each file in static/ is linked from a page."""
    html = client.get("/login").text
    _login(client)
    html += "".join(client.get(p).text for p in PAGES)
    static = Path(__file__).resolve().parents[1] / "trainer" / "server" / "static"
    for f in static.iterdir():
        assert f"/static/{f.name}?v=" in html, f.name
