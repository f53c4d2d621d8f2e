"""/metrics: written by prometheus-client, parseable, every name known and documented (docs kept honest)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import factories
from trainer.server.config import ServerConfig
from trainer.server.metrics import HELP, render
from trainer.server.service import Service
from trainer.store import incoming

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "trainer" / "server" / "README.md").read_text() + (ROOT / "docs" / "operations.md").read_text()


def test_every_metric_is_documented():
    missing = [name for name in HELP if not re.search(rf"(?<![\w]){name}(?![\w])", DOCS)]
    assert missing == [], f"document these in trainer/server/README.md or docs/operations.md: {missing}"


def test_metrics_parse_and_name_only_known_metrics(tmp_path):
    config = ServerConfig.model_validate({"mqtt": {"enabled": False}, "store": {"data_dir": str(tmp_path / "d")},
                                          "rounds": {"model_name": "shapes", "auto_start": False},
                                          "retention": {"hard_limit_bytes": 10**9}})
    svc = Service(config).start()
    try:
        svc.store.ingest_samples([incoming(factories.sample(frame_id=f"cam-agent-1.gate.{i}",
                                                            jpeg=factories.jpeg(seed=i))) for i in range(3)])
        svc.store.record_fleet([factories.status(), factories.status(agent_id="cam-agent-2", state="offline")], [])
        svc.meter.refresh(svc.store)
        text = render(svc)
    finally:
        svc.stop()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # prometheus-client names a counter family without its _total suffix
    names = {n + "_total" if f.type == "counter" else n for n, f in families.items()}
    assert names - set(HELP) == set()
    for expected in ("edgeloop_ingest_received_total", "edgeloop_queue_depth", "edgeloop_storage_bytes",
                     "edgeloop_agents", "edgeloop_rounds", "edgeloop_store_full", "edgeloop_agents_model_version"):
        assert expected in names, expected
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert values[("edgeloop_queue_depth", ())] == 3
    assert values[("edgeloop_storage_examples", (("category", "unreviewed"),))] == 3
    assert values[("edgeloop_agents", (("state", "offline"),))] == 1
    assert values[("edgeloop_agents", (("state", "online"),))] + values[("edgeloop_agents", (("state", "stale"),))] == 1
    assert values[("edgeloop_agents_model_version", (("model", "shapes"), ("version", "3")))] == 2
    assert values[("edgeloop_store_full", ())] == 0 and values[("edgeloop_storage_limit_bytes", ())] == 10**9
    assert values[("edgeloop_round_active", ())] == 0
