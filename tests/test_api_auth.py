"""The REST API in-process (ASGI, lifespan run): auth, CSRF, rate limit, size limit and the review flow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import factories
from trainer.server.app import create_app
from trainer.server.config import ConfigError, ServerConfig, resolve_token
from trainer.store import incoming

TOKEN = "test-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]


def make_config(tmp_path: Path, **http) -> ServerConfig:
    return ServerConfig.model_validate({"mqtt": {"enabled": False}, "http": {"max_body_bytes": 64 * 1024, **http},
                                        "store": {"data_dir": str(tmp_path / "data")}})


def seed(store, n: int = 3, detection: bool = False) -> None:
    make = factories.detection_sample if detection else factories.sample
    samples = [make(frame_id=f"cam-agent-1.gate.{i}", jpeg=factories.jpeg(seed=i), uncertainty=0.1 * (i + 1))
               for i in range(n)]
    if not store.project().labels:  # as [project] labels would: agents never define them
        store.configure_project(task=samples[0].task, labels=samples[0].labels)
    store.ingest_samples([incoming(s)
                          for s in samples])


@pytest.fixture
def client(tmp_path: Path):
    with TestClient(create_app(make_config(tmp_path), TOKEN)) as c:
        seed(c.app.state.service.store)
        yield c


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _routes(client: TestClient) -> list[tuple[str, str]]:
    out = []
    for path, ops in client.app.openapi()["paths"].items():
        for method in ops:
            out.append((method.upper(), path.replace("{item_id}", "1")))
    return out


def test_every_endpoint_needs_credentials(client: TestClient) -> None:
    routes = _routes(client)
    assert len(routes) >= 12
    for method, path in routes:
        if path in ("/healthz", "/api/login") or path.startswith("/models/"):
            continue  # /models/...onnx: agents download published models without the UI token (docs/publishing.md)
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic abc"}):
            r = client.request(method, path, headers=headers, json={"action": "skip"})
            # After http.login_max_failures wrong bearer tokens this address is blocked (429), never let in.
            assert r.status_code == 401 or (r.status_code == 429 and "Bearer" in headers.get("Authorization", "")), \
                (method, path, headers, r.status_code)
    assert client.get("/healthz").json()["ok"] is True


def test_review_flow_with_bearer(client: TestClient) -> None:
    project = client.get("/api/project", headers=BEARER).json()
    assert project == {"name": "default", "task": "classification", "labels": ["circle", "square", "triangle"],
                       "batch_size": 40}
    queue = client.get("/api/queue", headers=BEARER).json()
    assert queue["total"] == 3
    first = queue["items"][0]
    assert first["uncertainty"] == pytest.approx(0.3) and first["prediction"]["scores"]["circle"] == 0.4
    image = client.get(first["image_url"], headers=BEARER)
    assert image.headers["content-type"] == "image/jpeg" and image.content.startswith(b"\xff\xd8")
    r = client.post(f"/api/items/{first['id']}/label", headers={**BEARER, "X-User": "ann"}, json={"action": "accept"})
    assert r.status_code == 200 and r.json()["item"]["label"] == "circle" and r.json()["item"]["labeled_by"] == "ann"
    bad = client.post(f"/api/items/{first['id']}/label", headers=BEARER, json={"action": "label", "label": "hexagon"})
    assert bad.status_code == 422
    assert client.post("/api/items/999/label", headers=BEARER, json={"action": "skip"}).status_code == 404
    assert client.get("/api/progress", headers=BEARER).json()["corrected_since_last_round"] == 1
    assert client.post("/api/undo", headers={**BEARER, "X-User": "ann"}).json() == {"item_id": first["id"]}
    assert client.post("/api/undo", headers={**BEARER, "X-User": "ann"}).status_code == 404
    stats = client.get("/api/dataset/stats", headers=BEARER).json()
    assert stats["total"] == 0 and "1000" in stats["guidance"]
    assert client.get("/api/fleet", headers=BEARER).json() == {"agents": []}
    assert client.get("/api/dead_letters", headers=BEARER).json() == {"counts": {}, "recent": []}
    metrics = client.get("/metrics", headers=BEARER).text
    assert "edgeloop_queue_depth 3" in metrics and "edgeloop_ingest_stored_total" in metrics


def test_cookie_session_needs_csrf_on_writes(client: TestClient) -> None:
    r = client.post("/api/login", json={"token": TOKEN, "user": "bob"})
    assert r.status_code == 200
    csrf = r.json()["csrf_token"]
    assert "edgeloop_session" in client.cookies
    assert client.get("/api/queue").status_code == 200
    item_id = client.get("/api/queue").json()["items"][0]["id"]
    assert client.post(f"/api/items/{item_id}/label", json={"action": "skip"}).status_code == 403
    assert client.post(f"/api/items/{item_id}/label", json={"action": "skip"},
                       headers={"X-CSRF-Token": "forged"}).status_code == 403
    ok = client.post(f"/api/items/{item_id}/label", json={"action": "skip"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200 and ok.json()["item"]["labeled_by"] == "bob"
    assert client.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert client.get("/api/queue").status_code == 401


def test_form_login_redirects_locally_only(client: TestClient) -> None:
    r = client.post("/api/login", data={"token": TOKEN, "next": "/review"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/review"
    r = client.post("/api/login", data={"token": TOKEN, "next": "//evil.example/"}, follow_redirects=False)
    assert r.headers["location"] == "/"
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()


def test_login_rate_limit(client: TestClient) -> None:
    for _ in range(5):
        assert client.post("/api/login", json={"token": "wrong-guess-123456"}).status_code == 401
    blocked = client.post("/api/login", json={"token": TOKEN})
    assert blocked.status_code == 429 and blocked.headers["retry-after"] == "60"


def test_body_size_limit(client: TestClient) -> None:
    big = {"action": "label", "label": "x" * 10, "boxes": [{"x1": 0, "y1": 0, "x2": 1, "y2": 1, "label": "c"}] * 2000}
    r = client.post("/api/items/1/label", headers=BEARER, json=big)
    assert r.status_code == 413


def test_placeholder_tokens_are_refused(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    for bad in ("changeme", "short", ""):
        with pytest.raises(ConfigError):
            resolve_token(cfg, {"EDGELOOP_SERVER_TOKEN": bad} if bad else {"EDGELOOP_SERVER_TOKEN": "x"})
    assert resolve_token(cfg, {})[1] is True  # generated
    assert resolve_token(cfg, {"EDGELOOP_SERVER_TOKEN": TOKEN}) == (TOKEN, False)
    run = subprocess.run([sys.executable, "-m", "edgeloop", "server", "--data-dir", str(tmp_path / "d")],
                         cwd=ROOT, env={"EDGELOOP_SERVER_TOKEN": "changeme", "PATH": "/usr/bin"},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "placeholder" in run.stderr


def test_check_config_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[mqtt]\nbatch_max = 0\n[http]\ntokn = "x"\n')
    run = subprocess.run([sys.executable, "-m", "edgeloop", "server", "--check-config", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "mqtt.batch_max" in run.stderr and "http.tokn" in run.stderr
    good = tmp_path / "good.toml"
    good.write_text(f'[http]\ntoken = "{TOKEN}"\n[project]\ntask = "detection"\nlabels = ["car"]\n')
    run = subprocess.run([sys.executable, "-m", "edgeloop", "server", "--check-config", str(good)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_api_docs_need_login_too(client: TestClient) -> None:
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/docs").status_code == 401
    schema = client.get("/openapi.json", headers=BEARER).json()
    assert "/api/queue" in schema["paths"] and client.get("/docs", headers=BEARER).status_code == 404  # http.api_docs


def test_import_under_root_only_and_export_zip(tmp_path: Path) -> None:
    import io
    import zipfile

    root = tmp_path / "imports"
    for label, seed in (("ant", 1), ("bee", 2)):
        (root / "ds" / label).mkdir(parents=True)
        (root / "ds" / label / f"{label}.jpg").write_bytes(factories.jpeg(seed=seed))
    (tmp_path / "outside" / "x").mkdir(parents=True)
    config = ServerConfig.model_validate({**make_config(tmp_path).model_dump(mode="json", exclude={"http"}),
                                          "import_root": str(root)})
    with TestClient(create_app(config, TOKEN)) as c:
        r = c.post("/api/import", headers=BEARER, json={"format": "imagefolder", "path": "ds"})
        assert r.status_code == 200 and r.json()["added"] == 2
        for escape in ("../outside", str(tmp_path / "outside"), "ds/../../outside"):
            assert c.post("/api/import", headers=BEARER, json={"format": "imagefolder", "path": escape}).status_code == 403
        z = c.get("/api/export", headers=BEARER, params={"format": "imagefolder"})
        assert z.headers["content-type"] == "application/zip"
        names = sorted(zipfile.ZipFile(io.BytesIO(z.content)).namelist())
        assert [n.split("/")[0] for n in names if n.endswith(".jpg")] == ["ant", "bee"]
        assert c.get("/api/export", headers=BEARER, params={"format": "voc"}).status_code == 200
        assert c.get("/api/export", params={"format": "voc"}).status_code == 401
