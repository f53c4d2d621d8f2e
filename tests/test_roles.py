"""Every route of the OpenAPI document and every HTML page, asked by every role and by nobody.

Real accounts (argon2 passwords, personal API tokens) on a real store; the
expected answer comes from trainer/server/roles.py, which must list every route.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from test_api_auth import TOKEN, make_config, seed
from trainer.server.app import create_app
from trainer.server.roles import RULES, Role, rule_for

PUBLIC = {("POST", "/api/login"), ("GET", "/healthz"), ("GET", "/models/{name}/{version}.onnx"),
          ("HEAD", "/models/{name}/{version}.onnx")}
PAGES = ("/review", "/dataset", "/fleet", "/models", "/drift", "/users", "/audit")
EXTRA = (("GET", "/openapi.json"), ("GET", "/docs"))  # behind login, outside the schema
PARAMS = {"item_id": "1", "name": "nobody", "version": "1", "agent_id": "agent-x", "group": "grp-x",
          "command_id": "cmd-x", "example_id": "ex-x"}
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A server whose first admin was made with the bootstrap token, then one account per other role."""
    with TestClient(create_app(make_config(tmp_path_factory.mktemp("roles")), TOKEN)) as c:
        seed(c.app.state.service.store)
        boot = {"Authorization": f"Bearer {TOKEN}"}
        tokens = {}
        for role in ("admin", "publisher", "reviewer", "viewer"):
            r = c.post("/api/users", headers=boot if role == "admin" else tokens["admin"],
                       json={"name": f"{role}-1", "role": role, "password": PASSWORD})
            assert r.status_code == 201, r.text
            tokens[role] = {"Authorization": f"Bearer {r.json()['token']}"}
        yield c, tokens


def _operations(client: TestClient) -> list[tuple[str, str]]:
    ops = [(m.upper(), p) for p, item in client.app.openapi()["paths"].items() for m in item]
    return ops + list(EXTRA)


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PARAMS[m.group(1)], path)


def test_every_route_is_in_the_role_table(world) -> None:
    client, _ = world
    ops = _operations(client)
    assert len(ops) >= 50
    missing = [(m, p) for m, p in ops if (m, p) not in PUBLIC and rule_for(m, _concrete(p)) is None]
    assert missing == [], "routes without a role in trainer/server/roles.py"
    templates = {(m, p) for m, p in ops} | {("GET", p) for p in PAGES}
    stale = [(r.method, r.path) for r in RULES if (r.method, r.path) not in templates]
    assert stale == [], "roles.py lists routes the app does not have"


def _expected(method: str, path: str, role: Role | None) -> str:
    if (method, path) in PUBLIC:
        return "allowed"
    if role is None:
        return "401"
    return "allowed" if role >= rule_for(method, _concrete(path)).role else "403"


def test_every_route_times_every_role(world) -> None:
    client, tokens = world
    callers = {None: {}, **{Role.parse(r): h for r, h in tokens.items()}}
    wrong = []
    for method, path in _operations(client):
        for role, headers in callers.items():
            r = client.request(method, _concrete(path), headers=headers, json={})
            want = _expected(method, path, role)
            got = str(r.status_code) if r.status_code in (401, 403) else "allowed"
            if r.status_code in (429, 500) or got != want:
                wrong.append((method, path, role and role.label, r.status_code, r.text[:120]))
    assert wrong == []


def test_every_page_times_every_role(world) -> None:
    client, tokens = world
    for role in (None, *tokens):
        client.cookies.clear()
        if role is not None:
            r = client.post("/api/login", json={"user": f"{role}-1", "password": PASSWORD})
            assert r.status_code == 200 and r.json()["user"] == f"{role}-1"
        for page in PAGES:
            r = client.get(page, follow_redirects=False)
            if role is None:
                assert r.status_code == 303 and r.headers["location"].startswith("/login"), page
                continue
            allowed = Role.parse(role) >= rule_for("GET", page).role
            assert r.status_code == (200 if allowed else 403), (role, page, r.status_code)
            if allowed:  # the nav shows exactly the pages this role may open
                shown = set(re.findall(r'<a href="(/[a-z]+)"', r.text.split("</nav>")[0]))
                assert shown == {p for p in PAGES if Role.parse(role) >= rule_for("GET", p).role}, role
    client.cookies.clear()


def test_the_table_is_documented() -> None:
    """Every role-protected route appears in the role table of trainer/server/README.md."""
    readme = (Path(__file__).resolve().parents[1] / "trainer" / "server" / "README.md").read_text()
    for rule in RULES:
        assert f"`{rule.method} {rule.path}`" in readme, rule


def test_the_policy() -> None:
    """The table itself, stated independently: reads are for viewers, and the writes that matter are gated."""
    by = {(r.method, r.path): r.role for r in RULES}
    not_viewer_reads = {p for (m, p), role in by.items() if m == "GET" and role != Role.VIEWER}
    assert not_viewer_reads == {"/api/export", "/api/users", "/api/audit", "/users", "/audit"}
    assert by[("POST", "/api/items/{item_id}/label")] == Role.REVIEWER
    assert by[("POST", "/api/undo")] == Role.REVIEWER
    for (m, p), role in by.items():
        if m == "POST" and (p.startswith("/api/models/") or "/commands" in p or "/bundles" in p):
            assert role == Role.PUBLISHER, p
        if p.startswith("/api/users") or p.startswith("/api/import"):
            assert role == Role.ADMIN, p


def test_every_users_command_and_option_is_documented() -> None:
    import argparse

    from trainer.server import users_cli

    readme = (Path(__file__).resolve().parents[1] / "trainer" / "server" / "README.md").read_text()
    parser = argparse.ArgumentParser()
    users_cli.configure(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [name for name in sub.choices if f"`{name} " not in readme and f"users {name} " not in readme]
    missing += [o for p in sub.choices.values() for a in p._actions for o in a.option_strings
                if o.startswith("--") and o != "--help" and o not in readme]
    assert missing == []


# An independent statement of the policy, written from the product's rules and not from roles.py,
# so a wrong entry in roles.py (say publish lowered to viewer) fails here even though the table test
# above, which reads roles.py, would accept it.
NOT_WRITES = {("POST", "/api/login"), ("POST", "/api/logout")}
CHANGES_WHAT_AGENTS_RUN = re.compile(r"/(publish|rollback|rollout/[a-z]+|commands|bundles(/rollback)?)$")
ADMIN_ONLY = re.compile(r"^/(api/)?(users|audit)(/|$)")


def _policy_floor(method: str, path: str) -> Role:
    """The least role the product's policy allows for a route, whatever roles.py says."""
    floor = Role.VIEWER
    if method not in ("GET", "HEAD") and (method, path) not in NOT_WRITES:
        floor = Role.REVIEWER
        if CHANGES_WHAT_AGENTS_RUN.search(path):
            floor = Role.PUBLISHER
    if ADMIN_ONLY.match(path):
        floor = Role.ADMIN
    return floor


def test_the_policy_holds_independently_of_the_role_table(world) -> None:
    client, tokens = world
    floors = {(m, p): _policy_floor(m, p) for m, p in _operations(client) if (m, p) not in PUBLIC}
    assert sum(f == Role.PUBLISHER for f in floors.values()) >= 10  # the pattern does find the agent-changing routes
    assert sum(f == Role.ADMIN for f in floors.values()) >= 8
    too_open = []
    for (method, path), floor in floors.items():
        for role, headers in tokens.items():
            if Role.parse(role) < floor:
                r = client.request(method, _concrete(path), headers=headers, json={})
                if r.status_code != 403:
                    too_open.append((method, path, role, r.status_code))
    for role in tokens:  # pages, in a signed-in browser
        client.cookies.clear()
        assert client.post("/api/login", json={"user": f"{role}-1", "password": PASSWORD}).status_code == 200
        for page in PAGES:
            if Role.parse(role) < _policy_floor("GET", page):
                r = client.get(page, follow_redirects=False)
                if r.status_code != 403:
                    too_open.append(("GET", page, role, r.status_code))
    client.cookies.clear()
    assert too_open == [], "routes a lower role than the policy allows could use"
