"""Schemathesis fuzzes every operation of the OpenAPI schema over real HTTP: no 5xx, responses match."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from schemathesis import checks
from hypothesis import HealthCheck, given, settings

import factories
from trainer.server.config import ServerConfig
from trainer.server.embedded import EmbeddedServer
from trainer.store import incoming

TOKEN = "fuzz-token-0123456789abcdef"
# Schema-valid bodies can still be refused for what they mean (a label not in the project, a detection
# label without boxes: 422), so "positive data acceptance" is not one of the checks.
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.negative_data_rejection]
EXAMPLES = 25  # per operation: the whole test stays in seconds


@pytest.mark.slow
def test_fuzz_api_from_openapi_schema(tmp_path: Path) -> None:
    config = ServerConfig.model_validate({"mqtt": {"enabled": False}, "http": {"port": 0},
                                          "store": {"data_dir": str(tmp_path / "data")}})
    with EmbeddedServer(config, TOKEN) as srv:
        store = srv.service.store
        samples = [factories.detection_sample(frame_id=f"a.g.{i}", jpeg=factories.jpeg(seed=i)) for i in range(5)]
        store.ingest_samples([incoming(s)
                              for s in samples])
        schema = schemathesis.openapi.from_dict(srv.app.openapi())
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 12
        seen: dict[str, set[int]] = {}
        for op in operations:
            @given(case=op.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case) -> None:
                response = case.call_and_validate(base_url=srv.url.rstrip("/"), checks=CHECKS,
                                                  headers={"Authorization": f"Bearer {TOKEN}"})
                seen.setdefault(op.label, set()).add(response.status_code)
            check()
        print(seen)
        assert all(code < 500 for codes in seen.values() for code in codes), seen
        assert 200 in seen["GET /api/queue"] and 200 in seen["GET /api/project"]
