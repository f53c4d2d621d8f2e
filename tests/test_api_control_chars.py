"""Control characters in query strings and paths: a 422 on both store backends, never a 500; audit rows escape them.

PostgreSQL refuses a NUL in text, so before the guard a filter like ``?camera=a%00`` reached the database
and came back as a 500, and a write whose path carried one lost its audit row.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from test_api_auth import TOKEN, make_config, seed
from trainer.server.app import create_app
from trainer.store import audit

BOOT = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(tmp_path: Path):
    with TestClient(create_app(make_config(tmp_path), TOKEN), client=("10.1.2.3", 50000)) as c:
        seed(c.app.state.service.store)
        yield c


@pytest.mark.parametrize("url", ["/api/queue?camera=a%00", "/api/queue?predicted=%00", "/api/audit?actor=a%00",
                                 "/api/queue?camera=a%01b", "/api/queue?agent=%7f", "/api/queue?a%00=1",
                                 "/api/audit?action=x%0a"])
def test_a_control_character_in_a_query_string_is_a_422(client: TestClient, url: str) -> None:
    r = client.get(url, headers=BOOT)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "query"


@pytest.mark.parametrize("method,url", [("GET", "/api/items/1%00"), ("POST", "/api/users/a%00b/role"),
                                        ("POST", "/api/items/1%00/label")])
def test_a_control_character_in_a_path_is_a_422(client: TestClient, method: str, url: str) -> None:
    r = client.request(method, url, headers=BOOT, json={"role": "viewer"} if "role" in url else {"action": "reject"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "path"


def test_plain_filters_still_work(client: TestClient) -> None:
    assert client.get("/api/queue?camera=gate&predicted=cat", headers=BOOT).status_code == 200
    assert client.get("/api/audit?actor=bootstrap", headers=BOOT).status_code == 200


def test_the_audit_log_escapes_control_characters(client: TestClient) -> None:
    store = client.app.state.service.store
    store.write(lambda db: audit.record(db, "ev\x00e", "token", "10.0.0.1\x00", "label", "/api/items/1\x00/x",
                                        200, {"note\x00": "a\x00b\x1b", "n": 1}))
    row = audit.query(store.db.read(), audit.AuditQuery(limit=1))[0][0]
    assert row["actor"] == "ev\\x00e" and row["client"] == "10.0.0.1\\x00" and row["target"] == "/api/items/1\\x00/x"
    assert row["detail"] == {"note\\x00": "a\\x00b\\x1b", "n": 1}
