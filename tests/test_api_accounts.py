"""Accounts, personal tokens, the bootstrap token's retirement, refused changes and the audit log (both store backends).

In-process server (ASGI with its lifespan) on a real store; ``edgeloop users`` in its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from test_api_auth import TOKEN, make_config, seed
from trainer.server.app import create_app
from trainer.store import Store, accounts

ROOT = Path(__file__).resolve().parents[1]
BOOT = {"Authorization": f"Bearer {TOKEN}"}
PASSWORD = "correct horse battery"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(tmp_path: Path):
    with TestClient(create_app(make_config(tmp_path), TOKEN), client=("10.1.2.3", 50000)) as c:
        seed(c.app.state.service.store)
        yield c


def _add(client: TestClient, headers: dict, name: str, role: str, password: str | None = PASSWORD) -> str:
    body = {"name": name, "role": role, **({"password": password} if password else {})}
    r = client.post("/api/users", headers=headers, json=body)
    assert r.status_code == 201, r.text
    assert "password_hash" not in r.text and r.json()["token"].startswith("elu_")
    return r.json()["token"]


def test_bootstrap_makes_the_first_admin_then_retires(client: TestClient) -> None:
    assert client.get("/api/me", headers=BOOT).json() == {"name": "bootstrap", "role": "admin", "via": "bootstrap"}
    root = _add(client, BOOT, "root", "admin")
    r = client.get("/api/me", headers=BOOT)
    assert r.status_code == 401 and "bootstrap token is retired" in r.json()["detail"]
    r = client.post("/api/login", json={"token": TOKEN})
    assert r.status_code == 401 and "retired" in r.json()["detail"]
    assert client.get("/api/me", headers=bearer(root)).json() == {"name": "root", "role": "admin", "via": "token"}


def test_the_user_comes_from_the_account(client: TestClient) -> None:
    root = _add(client, BOOT, "root", "admin")
    ann = _add(client, bearer(root), "ann", "reviewer")
    item = client.get("/api/queue", headers=bearer(ann)).json()["items"][0]
    r = client.post(f"/api/items/{item['id']}/label", headers={**bearer(ann), "X-User": "mallory"},
                    json={"action": "reject"})
    assert r.status_code == 200 and r.json()["item"]["labeled_by"] == "ann"
    # A session too: the name comes from the account, the form has no name to declare.
    client.post("/api/login", json={"user": "ann", "password": PASSWORD})
    assert client.get("/api/me").json()["name"] == "ann"
    assert client.post("/api/login", json={"user": "ann", "password": "wrong password!"}).status_code == 401


def test_last_admin_cannot_be_demoted_or_disabled(client: TestClient) -> None:
    root = _add(client, BOOT, "root", "admin")
    for path, body in (("/api/users/root/role", {"role": "viewer"}), ("/api/users/root/disable", None)):
        r = client.post(path, headers=bearer(root), json=body)
        assert r.status_code == 409 and "last enabled admin" in r.json()["detail"]
    assert [(u["name"], u["role"], u["disabled"]) for u in client.get("/api/users", headers=bearer(root)).json()] \
        == [("root", "admin", False)]
    _add(client, bearer(root), "second", "admin")
    assert client.post("/api/users/root/role", headers=bearer(root), json={"role": "viewer"}).json()["role"] == "viewer"
    r = client.get("/api/users", headers=bearer(root))
    assert r.status_code == 403 and "needs the admin role" in r.json()["detail"]


def test_bad_account_input(client: TestClient) -> None:
    root = _add(client, BOOT, "root", "admin")
    h = bearer(root)
    assert client.post("/api/users", headers=h, json={"name": "root", "role": "viewer"}).status_code == 409
    assert client.post("/api/users", headers=h, json={"name": "x", "role": "god"}).status_code == 422
    assert client.post("/api/users", headers=h, json={"name": "../x", "role": "viewer"}).status_code == 422
    assert client.post("/api/users", headers=h, json={"name": "x", "role": "viewer", "password": "short"}
                       ).status_code == 422
    assert client.post("/api/users/ghost/disable", headers=h).status_code == 404
    assert [u["name"] for u in client.get("/api/users", headers=h).json()] == ["root"]


def test_disabled_account_loses_session_and_token(client: TestClient) -> None:
    root = _add(client, BOOT, "root", "admin")
    bob = _add(client, bearer(root), "bob", "publisher")
    browser = TestClient(client.app)
    assert browser.post("/api/login", json={"user": "bob", "password": PASSWORD}).status_code == 200
    assert browser.get("/api/me").status_code == 200
    assert client.post("/api/users/bob/disable", headers=bearer(root)).json()["disabled"] is True
    assert browser.get("/api/me").status_code == 401  # its session ended
    r = client.get("/api/me", headers=bearer(bob))
    assert r.status_code == 401 and "bob is disabled" in r.json()["detail"]
    assert browser.get("/review", follow_redirects=False).status_code == 303
    r = browser.post("/api/login", json={"user": "bob", "password": PASSWORD})
    assert r.status_code == 401 and "disabled" in r.json()["detail"]
    client.post("/api/users/bob/enable", headers=bearer(root))
    assert client.get("/api/me", headers=bearer(bob)).json()["name"] == "bob"
    assert browser.get("/api/me").status_code == 401  # the session ended for good when disabled
    # Disabled from the shell (edgeloop users, another process): the server reads the account per request.
    assert browser.post("/api/login", json={"user": "bob", "password": PASSWORD}).status_code == 200
    client.app.state.service.store.write(lambda db: accounts.set_disabled(db, "bob", True))
    r = browser.get("/api/me")
    assert r.status_code == 401 and "bob is disabled" in r.json()["detail"]


def test_rotated_token_is_refused_and_says_so(client: TestClient) -> None:
    root = _add(client, BOOT, "root", "admin")
    old = _add(client, bearer(root), "robot", "reviewer", password=None)
    new = client.post("/api/users/robot/rotate-token", headers=bearer(root)).json()["token"]
    assert new != old
    r = client.get("/api/me", headers=bearer(old))
    assert r.status_code == 401 and "replaced by a newer one" in r.json()["detail"]
    assert client.get("/api/me", headers=bearer(new)).json()["name"] == "robot"
    # a token-only account cannot sign in with a password
    assert client.post("/api/login", json={"user": "robot", "password": PASSWORD}).status_code == 401


def test_audit_log_records_who_what_when_where(client: TestClient) -> None:
    root = _add(client, BOOT, "root", "admin")
    ann = _add(client, bearer(root), "ann", "reviewer")
    item = client.get("/api/queue", headers=bearer(ann)).json()["items"][0]
    client.post(f"/api/items/{item['id']}/label", headers=bearer(ann), json={"action": "reject"})
    assert client.post("/api/users/root/disable", headers=bearer(root)).status_code == 409
    assert client.post("/api/models/rounds", headers=bearer(ann)).status_code == 403  # refused: audited too
    log = client.get("/api/audit", headers=bearer(root)).json()
    rows = [(e["actor"], e["action"], e["status"]) for e in log["entries"]]
    assert rows[:5] == [("ann", "start_round", 403), ("root", "user_disable", 409), ("ann", "label", 200),
                        ("root", "user_add", 200), ("bootstrap", "user_add", 200)]
    label = log["entries"][2]
    assert label["client"] == "10.1.2.3" and label["via"] == "token" and label["detail"]["body"]["action"] == "reject"
    assert label["target"] == f"/api/items/{item['id']}/label" and label["detail"]["path"]["item_id"] == str(item["id"])
    assert "password" not in str(log)
    only = client.get("/api/audit", headers=bearer(root), params={"actor": "ann", "failed": "false"}).json()
    assert [e["action"] for e in only["entries"]] == ["label"] and only["total"] == 1
    page1 = client.get("/api/audit", headers=bearer(root), params={"limit": 2}).json()
    page2 = client.get("/api/audit", headers=bearer(root),
                       params={"limit": 2, "before_id": page1["next_before_id"]}).json()
    assert [e["id"] for e in page1["entries"] + page2["entries"]] == [e["id"] for e in log["entries"][:4]]
    assert client.get("/api/audit", headers=bearer(ann)).status_code == 403


def _cli(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeloop", "users", *args, "--data-dir", str(data_dir)],
                          input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_users_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = _cli(data, "add", "alice", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("elu_") and "shown once" in r.stderr
    r = _cli(data, "set-role", "alice", "viewer")
    assert r.returncode == 1 and "last enabled admin" in r.stderr
    assert _cli(data, "add", "bot", "--role", "reviewer", "--no-password").returncode == 0
    new = _cli(data, "rotate-token", "bot").stdout.strip()
    assert _cli(data, "disable", "bot").returncode == 0
    listing = _cli(data, "list").stdout
    assert "alice" in listing and "admin" in listing and "disabled" in listing
    with Store(data) as store:
        db = store.db.read()
        assert accounts.get(db, "alice").role == "admin"
        assert accounts.by_token(db, token)[0].name == "alice" and accounts.by_token(db, new)[0].name == "bot"
        actions = [r[0] for r in db.execute("SELECT action FROM audit_log ORDER BY id").fetchall()]
    assert actions == ["user_add", "user_add", "user_rotate_token", "user_disable"]


def test_wrong_passwords_are_rate_limited_and_audited(client: TestClient) -> None:
    root = _add(client, BOOT, "root", "admin")
    for _ in range(5):
        assert client.post("/api/login", json={"user": "root", "password": "not the password"}).status_code == 401
    blocked = client.post("/api/login", json={"user": "root", "password": PASSWORD})
    assert blocked.status_code == 429  # the right password too, for the rest of the window
    assert client.get("/api/me", headers=bearer(root)).status_code == 429  # the address is blocked
    rows = client.app.state.service.store.db.read().execute(
        "SELECT actor, action, status FROM audit_log WHERE action = 'login' ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [("root", "login", 401)] * 5


def test_new_password_ends_the_accounts_sessions(client: TestClient) -> None:
    root = _add(client, BOOT, "root", "admin")
    _add(client, bearer(root), "bob", "reviewer")
    browser = TestClient(client.app)
    assert browser.post("/api/login", json={"user": "bob", "password": PASSWORD}).status_code == 200
    assert client.post("/api/users/bob/password", headers=bearer(root),
                       json={"password": "another long password"}).status_code == 200
    assert browser.get("/api/me").status_code == 401
    assert browser.post("/api/login", json={"user": "bob", "password": PASSWORD}).status_code == 401
    assert browser.post("/api/login", json={"user": "bob", "password": "another long password"}).status_code == 200


def test_two_concurrent_changes_never_leave_no_admin(tmp_path: Path) -> None:
    import threading

    store = Store(tmp_path / "race")
    try:
        for _ in range(10):
            store.write(lambda db: db.execute("DELETE FROM accounts"))
            for name in ("a1", "a2"):
                store.write(lambda db, n=name: accounts.create(db, n, "admin", None))
            barrier, refused = threading.Barrier(2), []

            def disable(name: str) -> None:
                barrier.wait()
                try:
                    store.write(lambda db: accounts.set_disabled(db, name, True))
                except accounts.AccountError as e:
                    refused.append(e.status)
            threads = [threading.Thread(target=disable, args=(n,)) for n in ("a1", "a2")]
            [t.start() for t in threads]
            [t.join() for t in threads]
            assert accounts.active_admins(store.db.read()) == 1 and refused == [409]
    finally:
        store.close()


def test_bootstrap_stays_retired_when_every_admin_is_lost(client: TestClient) -> None:
    r = client.post("/api/login", json={"token": TOKEN, "user": "early"})
    assert r.status_code == 200
    csrf = r.json()["csrf_token"]
    root = _add(client, BOOT, "root", "admin")
    assert client.get("/api/me").status_code == 401  # the bootstrap session is refused and ended
    store = client.app.state.service.store
    assert not [s for s in client.app.state.auth._sessions.values() if s.kind == "bootstrap"]
    store.write(lambda db: db.execute("UPDATE accounts SET disabled = 1"))  # every admin lost (outside the API)
    assert client.get("/api/me", headers=bearer(root)).status_code == 401
    r = client.get("/api/me", headers=BOOT)
    assert r.status_code == 401 and "retired" in r.json()["detail"]
    assert client.post("/api/users", headers={"X-CSRF-Token": csrf},
                       json={"name": "eve", "role": "admin", "password": PASSWORD}).status_code == 401
    assert client.post("/api/login", json={"token": TOKEN}).status_code == 401
    store.write(lambda db: accounts.set_disabled(db, "root", False))  # the recovery: edgeloop users on the shell
    assert client.get("/api/me", headers=bearer(root)).json()["name"] == "root"


def test_two_simultaneous_adds_of_one_name_make_one_account_and_one_409(tmp_path: Path) -> None:
    import threading

    store = Store(tmp_path / "race")
    try:
        for trial in range(10):
            barrier, outcomes = threading.Barrier(2), []

            def add(name: str) -> None:
                barrier.wait()
                try:
                    store.write(lambda db: accounts.create(db, name, "viewer", None))
                    outcomes.append(201)
                except accounts.AccountError as e:
                    outcomes.append(e.status)
            threads = [threading.Thread(target=add, args=(f"bob{trial}",)) for _ in range(2)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            assert sorted(outcomes) == [201, 409]
    finally:
        store.close()


def test_the_audit_detail_keeps_path_and_body_apart_and_refusals_stay_small(client: TestClient) -> None:
    root = _add(client, BOOT, "root", "admin")
    ann = _add(client, bearer(root), "ann", "reviewer")
    viewer = _add(client, bearer(root), "vic", "viewer")
    item = client.get("/api/queue", headers=bearer(ann)).json()["items"][0]
    r = client.post(f"/api/items/{item['id']}/label", headers=bearer(ann), json={"action": "reject", "item_id": 424242})
    assert r.status_code in (200, 422)
    label = client.get("/api/audit", headers=bearer(root), params={"action": "label"}).json()["entries"][0]
    assert label["detail"]["path"] == {"item_id": str(item["id"])}  # the body cannot rename the target
    assert label["detail"]["body"]["item_id"] == 424242
    for _ in range(5):  # a refused caller hammering a route: one row per minute, values not kept
        assert client.post("/api/models/rounds", headers=bearer(viewer), json={"note": "x" * 5000}).status_code == 403
    refused = client.get("/api/audit", headers=bearer(root), params={"actor": "vic"}).json()
    assert refused["total"] == 1
    detail = refused["entries"][0]["detail"]
    assert detail["repeated"] == 5 and "x" * 10 not in str(detail)


def test_audit_rows_older_than_audit_days_are_pruned(tmp_path: Path) -> None:
    import time

    from trainer.store import audit
    from trainer.store.retention import RetentionConfig, RetentionPass

    store = Store(tmp_path / "data")
    try:
        now = time.time()
        for age_days in (40, 31, 1, 0):
            store.write(lambda db, a=age_days: audit.record(db, "ann", "token", "10.0.0.1", "label", at=now - a * 86400))
        RetentionPass(store, RetentionConfig(), clock=lambda: now).run_once()
        assert audit.query(store.db.read(), audit.AuditQuery())[1] == 4  # off unless configured
        RetentionPass(store, RetentionConfig(audit_days=30), clock=lambda: now).run_once()
        rows, total = audit.query(store.db.read(), audit.AuditQuery())
        assert total == 2 and min(r["at"] for r in rows) > now - 30 * 86400
    finally:
        store.close()
