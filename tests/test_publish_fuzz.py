"""Schemathesis fuzzes the model routes over real HTTP: no 5xx, documented status codes, schemas respected."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import schemathesis
from fastapi import FastAPI, Header, HTTPException
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from protocol.manifest import Cohort
from trainer.publish import keys
from trainer.publish.registry import NewModel, Registry
from trainer.publish.routes import api_router, router
from trainer.publish.service import PublishingConfig, PublishingService
from trainer.publish.simfleet import ModelServer, tiny_classifier
from trainer.rounds.pipeline import RoundManager, RoundsConfig
from trainer.store import Store

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]
# Starting a round spawns a training process per call; its route is covered in test_publish_api.
SKIP = {"POST /api/models/rounds"}


def require_user(authorization: str | None = Header(None)) -> str:
    if authorization != "Bearer fuzz":
        raise HTTPException(401, "authentication required")
    return "fuzzer"


@pytest.mark.slow
def test_fuzz_model_routes(tmp_path, broker):
    files = keys.generate(tmp_path / "keys")
    store, registry = Store(tmp_path / "data"), Registry(tmp_path / "data")
    for seed in range(2):
        f = tiny_classifier(tmp_path / f"{seed}.onnx", "m", ("a", "b"), seed=seed)
        registry.register(NewModel(name="m", file=f, task="classification", labels=("a", "b"),
                                   metrics={"accuracy": 0.5}))
    svc = PublishingService.open(PublishingConfig(model_name="m", signing_key=files.private,
                                                  base_url="http://127.0.0.1:9", mqtt_host=broker.host,
                                                  mqtt_port=broker.port), registry=registry)
    svc.controller.publish("m", 1, Cohort("fleet"))
    rounds = RoundManager(store, registry, RoundsConfig(model_name="m", work_dir=tmp_path / "rounds"))
    app = FastAPI()
    app.state.registry, app.state.publishing, app.state.rounds = registry, svc, rounds
    app.state.service = SimpleNamespace(store=store)
    app.include_router(router)
    app.include_router(api_router(require_user))
    seen: dict[str, set[int]] = {}
    try:
        with ModelServer(app) as server:
            schema = schemathesis.openapi.from_dict(app.openapi())
            operations = [r.ok() for r in schema.get_all_operations()]
            assert len(operations) >= 13
            for op in operations:
                if op.label in SKIP:
                    continue

                @given(case=op.as_strategy())
                @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck))
                def check(case) -> None:
                    response = case.call_and_validate(base_url=server.url, checks=CHECKS,
                                                      headers={"Authorization": "Bearer fuzz"})
                    seen.setdefault(op.label, set()).add(response.status_code)
                check()
    finally:
        rounds.close()
        svc.close()
        registry.close()
        store.close()
    assert all(code < 500 for codes in seen.values() for code in codes), seen
    assert 200 in seen["GET /api/models"]
