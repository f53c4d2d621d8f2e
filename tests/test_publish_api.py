"""The /api/models routes through a real FastAPI app: auth, history, compare, lineage, publish, rollback, rounds."""

from __future__ import annotations

from types import SimpleNamespace

import factories
import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient

from trainer.publish import keys
from trainer.publish.registry import NewModel, Registry
from trainer.publish.routes import api_router, router
from trainer.publish.service import PublishingConfig, PublishingService
from trainer.publish.simfleet import tiny_classifier
from trainer.rounds.pipeline import RoundManager, RoundsConfig
from trainer.store import Store, incoming

AUTH = {"Authorization": "Bearer let-me-in"}


def require_user(authorization: str | None = Header(None)) -> str:
    if authorization != AUTH["Authorization"]:
        raise HTTPException(401, "authentication required")
    return "tester"


@pytest.fixture
def api(tmp_path, broker):
    files = keys.generate(tmp_path / "keys")
    store = Store(tmp_path / "data")
    registry = Registry(tmp_path / "data")
    svc = PublishingService.open(PublishingConfig(model_name="m", signing_key=files.private,
                                                  base_url="http://127.0.0.1:9", mqtt_host=broker.host,
                                                  mqtt_port=broker.port), registry=registry)
    rounds = RoundManager(store, registry, RoundsConfig(model_name="m", work_dir=tmp_path / "rounds"))
    app = FastAPI()
    app.state.registry, app.state.publishing, app.state.rounds = registry, svc, rounds
    app.state.service = SimpleNamespace(store=store)
    app.include_router(router)
    app.include_router(api_router(require_user))
    yield TestClient(app), registry, store, tmp_path
    rounds.close()
    svc.close()
    registry.close()
    store.close()


def register(registry, tmp_path, seed, acc, examples=None):
    f = tiny_classifier(tmp_path / f"r{seed}.onnx", "m", ("a", "b"), seed=seed)
    return registry.register(NewModel(name="m", file=f, task="classification", labels=("a", "b"),
                                      metrics={"accuracy": acc}, per_class={"a": {"recall": acc}},
                                      examples=examples or {}))


def test_every_api_route_needs_auth_but_downloads_do_not(api):
    client, registry, _store, tmp_path = api
    register(registry, tmp_path, 1, 0.5)
    for method, path in (("get", "/api/models"), ("get", "/api/models/m/1"), ("post", "/api/models/m/rollback"),
                         ("get", "/api/models/rounds"), ("post", "/api/models/rounds/cancel")):
        assert getattr(client, method)(path).status_code == 401, path
    client.post("/api/models/m/1/publish", json={"staged": False, "cohort": {"stage": "fleet"}}, headers=AUTH)
    assert client.get("/models/m/1.onnx").status_code == 200


def test_history_detail_and_compare(api):
    client, registry, _store, tmp_path = api
    register(registry, tmp_path, 1, 0.5)
    register(registry, tmp_path, 2, 0.75)
    rows = client.get("/api/models", headers=AUTH).json()
    assert [(r["version"], r["metrics"]["accuracy"]) for r in rows] == [(2, 0.75), (1, 0.5)]
    one = client.get("/api/models/m/1", headers=AUTH).json()
    assert one["state"] == "candidate" and one["events"][0]["kind"] == "registered"
    cmp = client.get("/api/models/m/compare", params={"a": 1, "b": 2}, headers=AUTH).json()
    assert cmp["metric_delta"] == {"accuracy": 0.25}
    assert client.get("/api/models/m/9", headers=AUTH).status_code == 404
    assert client.get("/api/models/m/compare", params={"a": 1, "b": 9}, headers=AUTH).status_code == 404


def test_publish_by_hand_then_roll_back(api):
    client, registry, _store, tmp_path = api
    register(registry, tmp_path, 1, 0.5)
    register(registry, tmp_path, 2, 0.4)
    for v in (1, 2):
        r = client.post(f"/api/models/m/{v}/publish", json={"staged": False, "cohort": {"stage": "fleet"}},
                        headers=AUTH)
        assert r.status_code == 202, r.text
    assert r.json()["url"] == "http://127.0.0.1:9/models/m/2.onnx"
    r = client.post("/api/models/m/rollback", json={}, headers=AUTH)
    assert r.json() == {"name": "m", "version": 3, "note": "rollback to 1"}
    detail = client.get("/api/models/m/3", headers=AUTH).json()
    assert detail["publications"][0]["stage"] == "fleet" and '"note":"rollback to 1"' in \
        detail["publications"][0]["manifest"]
    assert client.post("/api/models/m/9/publish", json={"staged": False}, headers=AUTH).status_code == 404
    assert client.post("/api/models/m/1/publish", json={"cohort": {"stage": "everyone"}},
                       headers=AUTH).status_code == 422


def test_lineage_of_an_edge_example(api):
    client, registry, store, tmp_path = api
    sample = factories.sample(frame_id="cam-agent-1.gate.000042")
    store.configure_project(task=sample.task, labels=sample.labels)  # agents never define the labels
    store.ingest_samples([incoming(sample)])
    item_id = store.queue()[0][0].id
    store.label(item_id, "alice", "label", label="square")
    register(registry, tmp_path, 1, 0.5, examples={str(item_id): "train"})
    out = client.get(f"/api/models/by-example/{item_id}", headers=AUTH).json()
    assert out["models"] == [{"name": "m", "version": 1, "split": "train"}]
    p = out["provenance"]
    assert (p["agent_id"], p["camera_id"], p["model_version"], p["strategy"], p["labeled_by"]) == \
        ("cam-agent-1", "gate", 3, "margin", "alice")
    assert client.get("/api/models/m/1/examples", headers=AUTH).json() == {str(item_id): "train"}
    for unknown in ("999", "99999999999999999999999", "abc"):
        assert client.get(f"/api/models/by-example/{unknown}", headers=AUTH).json()["provenance"] is None


def test_round_and_rollout_routes_report_and_refuse_cleanly(api):
    client, _registry, _store, _tmp = api
    assert client.get("/api/models/m/rollout", headers=AUTH).json() == {"state": "idle"}
    assert client.post("/api/models/m/rollout/cancel", headers=AUTH).json() == {"cancelled": False}
    p = client.get("/api/models/rounds", headers=AUTH).json()
    assert p["state"] == "idle" and p["last"] is None
    assert client.post("/api/models/rounds/cancel", headers=AUTH).json() == {"cancelled": False}
