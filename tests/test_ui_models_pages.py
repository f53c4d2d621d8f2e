"""The models page over plain HTTP (no browser): login, CSP, its static files, config-driven content."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from trainer.server.app import create_app
from trainer.server.config import ServerConfig
from trainer.server.pages import NAV

TOKEN = "models-pages-token-0123456789abcdef"
SCRIPTS = ("common.js", "charts.js", "models.js", "rounds.js", "rollout.js")


def _client(tmp_path: Path, **sections) -> TestClient:
    config = ServerConfig.model_validate({
        "mqtt": {"enabled": False}, "store": {"data_dir": str(tmp_path / "data")},
        "project": {"task": "classification", "labels": ["cat", "dog"]}, **sections})
    return TestClient(create_app(config, token=TOKEN), base_url="http://127.0.0.1")


@pytest.fixture
def client(tmp_path: Path):
    with _client(tmp_path) as c:
        yield c


def _login(client: TestClient) -> None:
    r = client.post("/api/login", json={"token": TOKEN, "user": "ana"})
    assert r.status_code == 200, r.text


def test_models_page_requires_login(client: TestClient) -> None:
    r = client.get("/models?example=12", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/login?next=%2Fmodels%3Fexample%3D12")
    assert client.get("/api/models/rounds").status_code == 401


def test_models_page_is_in_the_nav_of_every_page(client: TestClient) -> None:
    assert "/models" in [n.href for n in NAV]
    _login(client)
    for path in ("/review", "/dataset", "/fleet", "/models"):
        assert '<a href="/models"' in client.get(path).text, path
    assert 'href="/models" aria-current="page"' in client.get("/models").text


def test_csp_holds_and_only_bundled_scripts_run(client: TestClient) -> None:
    _login(client)
    r = client.get("/models")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp
    html = r.text
    # Nothing the CSP would block: no inline script, no style attribute or element, no inline handler.
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert not re.search(r"\sstyle=|<style|\son[a-z]+=", html)
    assert re.search(r'<meta name="csrf-token" content="[^"]{20,}">', html)
    urls = re.findall(r'<script src="(/static/[^"]+)"', html)
    assert [u.split("?")[0].rsplit("/", 1)[1] for u in urls] == list(SCRIPTS)
    for url in urls + re.findall(r'href="(/static/app\.css[^"]*)"', html):
        asset = client.get(url)
        assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"], url
        assert asset.headers["x-content-type-options"] == "nosniff"
    # The scripts call only same-origin API paths, so connect-src 'self' is enough.
    for name in SCRIPTS[1:]:
        js = client.get(f"/static/{name}").text
        assert "http://" not in js.replace("http://www.w3.org/2000/svg", "") and "https://" not in js, name
        assert "innerHTML" not in js and "eval(" not in js, name


def test_without_rounds_or_publish_the_page_says_so(client: TestClient) -> None:
    _login(client)
    html = client.get("/models").text
    assert 'data-rounds="off"' in html and 'data-publish="off"' in html
    assert "Training rounds are off on this server" in html and "Publishing is off on this server" in html
    assert re.search(r'id="btn-start-round" disabled', html)
    # What the page's scripts then meet: the API says why, and they show it.
    assert client.get("/api/models/rounds").status_code == 404
    assert client.get("/api/models").status_code == 404


def test_rounds_config_reaches_the_page(tmp_path: Path) -> None:
    train = {"model": "small_cnn", "epochs": 7, "device": "cpu"}
    with _client(tmp_path, rounds={"model_name": "gate-cam", "train": train, "auto_start": False}) as c:
        _login(c)
        html = c.get("/models").text
        assert 'data-model="gate-cam"' in html and 'data-max-epochs="7"' in html
        assert 'data-rounds="on"' in html and "Training rounds are off" not in html
        assert not re.search(r'id="btn-start-round" disabled', html)
        assert c.get("/api/models/rounds").json()["state"] == "idle"
        assert c.get("/api/models", params={"name": "gate-cam"}).json() == []
