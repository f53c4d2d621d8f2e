"""The Users and Audit pages in Chromium: the first admin made with the bootstrap token, accounts, roles.

A real server (uvicorn in a thread) and a real browser: the bootstrap token
makes alice admin and is spent; alice signs in with her password, adds a
reviewer and a token-only publisher, changes a role, disables an account,
rotates a token, is refused demoting herself (the last admin), and reads all
of it on the Audit page; a viewer sees neither page. With
EDGELOOP_SCREENSHOTS=DIR the pages are saved as DIR/users.png and DIR/audit.png.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_ui_review import browser_page, fill_store, login, running_server
from test_ui_screenshots import shot

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]
PASSWORD = "correct horse battery"


def _sign_in(page, base: str, path: str, user: str) -> None:
    page.goto(base + path)
    page.wait_for_url("**/login?next=*")
    page.fill("#user", user)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + path)


def _add(page, name: str, role: str, password: str | None) -> str:
    page.fill("#new-name", name)
    page.select_option("#new-role", role)
    page.fill("#new-password", password or "")
    page.click("#btn-user-add")
    page.wait_for_selector(f"#users-body tr[data-user='{name}']")
    return page.inner_text("#shown-token")


def _screenshot(page, name: str) -> None:
    out = os.environ.get("EDGELOOP_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shot(page, Path(out) / name, full_page=True)


def test_users_and_audit_pages(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", "classification") as (base, store):
        fill_store(store, tmp_path, "classification", pending=2, labelled=0, size=64)
        with browser_page((1280, 760)) as (page, errors):
            login(page, base, "/users")  # the bootstrap token: admin while no admin account exists
            page.wait_for_selector("#users-body td")
            assert "bootstrap token" in page.inner_text("#users-body")
            page.fill("#new-name", "alice")
            page.select_option("#new-role", "admin")
            page.fill("#new-password", PASSWORD)
            page.click("#btn-user-add")
            page.wait_for_selector("#bootstrap-done")  # the bootstrap session ended with the first admin
            assert page.inner_text("#shown-token").startswith("elu_")
            page.click("#bootstrap-done a")
            page.wait_for_url("**/login?next=*")
            page.fill("#user", "alice")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(base + "/users")
            assert "signed in as alice" in page.inner_text("header")

            _add(page, "bob", "reviewer", PASSWORD)
            first = _add(page, "robot", "publisher", None)
            page.select_option("tr[data-user='bob'] select.role", "viewer")
            page.wait_for_selector("tr[data-user='bob'][data-role='viewer']")
            page.click("tr[data-user='robot'] button:has-text('Disable')")
            page.wait_for_selector("tr[data-user='robot'][data-disabled='yes']")
            page.click("tr[data-user='robot'] button:has-text('New token')")
            page.wait_for_function(f"() => document.querySelector('#shown-token').textContent !== {first!r}")
            page.select_option("tr[data-user='alice'] select.role", "viewer")  # the last admin: refused
            page.wait_for_selector("#users-error:not(.hidden)")
            assert "last enabled admin" in page.inner_text("#users-error")
            page.wait_for_selector("tr[data-user='alice'][data-role='admin']")
            assert page.locator("#users-body tr").count() == 3
            _screenshot(page, "users.png")

            page.click("nav a[href='/audit']")
            page.wait_for_selector("#audit-body tr[data-action]")
            actions = page.locator("#audit-body tr").evaluate_all("rows => rows.map(r => r.dataset.action)")
            for action in ("login", "user_add", "user_role", "user_disable", "user_rotate_token"):
                assert action in actions, (action, actions)
            page.select_option("#f-action", "user_role")
            page.click("#btn-audit-filter")
            page.wait_for_function("() => [...document.querySelectorAll('#audit-body tr')].every("
                                   "r => r.dataset.action === 'user_role')")
            statuses = page.locator("#audit-body tr").evaluate_all("rows => rows.map(r => r.dataset.status)")
            assert sorted(statuses) == ["200", "409"]
            page.select_option("#f-action", "")
            page.click("#btn-audit-filter")
            page.wait_for_selector("#audit-body tr[data-action='login']")
            _screenshot(page, "audit.png")

            page.context.clear_cookies()
            _sign_in(page, base, "/review", "bob")
            nav = page.inner_text("nav")
            assert "Review" in nav and "Users" not in nav and "Audit" not in nav
            assert page.goto(base + "/users").status == 403
            expected = {f"401 {base}/api/users", f"409 {base}/api/users/alice/role", f"403 {base}/users"}
            assert [e for e in errors if e not in expected and "401 (Unauthorized)" not in e
                    and "409 (Conflict)" not in e and "403 (Forbidden)" not in e] == []
