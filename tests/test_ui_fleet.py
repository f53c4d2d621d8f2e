"""The fleet page's commands and configuration bundles in headless Chromium, with real agents.

The server (MQTT on, a real signing key) and two agents run as in
tests/test_fleet_bundles.py. The browser pings one agent and sends a command
to a group from the page, reads each answer, publishes a bundle from the group
panel, sees a bad one refused with its path, rolls back, and the test checks
the agents run what the page shows. With EDGELOOP_SCREENSHOTS=DIR the page is
saved as DIR/fleet-operations.png (docs/screenshots holds the committed one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent_helpers import running
from mqtt_util import wait_until
from test_fleet_commands import TOKEN, agent_config, fleet_server, reported
from test_ui_review import browser_page
from test_ui_screenshots import shot
from trainer.publish import keys

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


def _login(page, base: str) -> None:
    page.goto(base + "fleet")
    page.wait_for_url("**/login?next=*")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(base + "fleet")


def _push(page, group: str, settings: dict, note: str = "") -> None:
    panel = page.locator(f".group[data-group='{group}']")
    panel.locator("textarea.settings").fill(json.dumps(settings))
    panel.locator("input.note").fill(note)
    panel.locator("button.push").click()


def test_commands_and_bundles_from_the_fleet_page(tmp_path: Path, broker) -> None:
    key = keys.generate(tmp_path / "keys")
    with fleet_server(tmp_path, broker, key.private) as (srv, http):
        a1 = agent_config(tmp_path, broker, "agent-1", ["north"], [str(key.public)])
        a2 = agent_config(tmp_path, broker, "agent-2", ["north"], [str(key.public)])
        with running(a1) as agent1, running(a2) as agent2, browser_page((1440, 1000)) as (page, errors):
            assert wait_until(lambda: reported(srv, "agent-1", "agent-2"), timeout=30)
            _login(page, srv.url)
            page.locator("#fleet-body tr[data-agent='agent-1'] button[data-action='ping']").click()
            row = page.locator("#command-results-body tr[data-agent='agent-1']")
            row.locator(".badge[data-state='answered']").wait_for()
            assert "shapes v1 (ok)" in row.locator(".answer").inner_text()

            group = page.locator(".group[data-group='north']")
            group.locator(".group-command button[data-action='resend_outbox']").click()
            page.wait_for_function("() => document.querySelectorAll('#command-results-body tr').length === 3")
            assert page.locator("#command-results-body .badge[data-state='answered']").count() == 3

            _push(page, "north", {"sampling": {"per_minute": 5}, "uplink": {"telemetry_period_s": 2}}, "fewer")
            group.locator(".bundle-version", has_text="bundle v1").wait_for()
            assert wait_until(lambda: agent1.bundles.version == agent2.bundles.version == 1, timeout=20)
            assert agent1.cfg.sampling.per_minute == 5

            _push(page, "north", {"sampling": {"per_minute": -1}})
            page.locator("#groups-error", has_text="sampling.per_minute").wait_for()
            _push(page, "north", {"sampling": {"per_minute": 12}})
            group.locator(".bundle-version", has_text="bundle v2").wait_for()
            page.once("dialog", lambda d: d.accept())
            group.locator("button.rollback").click()
            group.locator(".bundle-version", has_text="bundle v3").wait_for()
            assert "rollback to v1" in group.inner_text()
            assert wait_until(lambda: agent1.bundles.version == 3 and agent1.cfg.sampling.per_minute == 5,
                              timeout=20)
            page.reload()  # the agents' reported versions, as the page shows them
            page.locator(".group[data-group='north'] li[data-agent='agent-2'] .config-version",
                         has_text="v3").wait_for(timeout=20_000)
            out = os.environ.get("EDGELOOP_SCREENSHOTS")
            if out:
                Path(out).mkdir(parents=True, exist_ok=True)
                shot(page, Path(out) / "fleet-operations.png", full_page=True)
            # The refused bundle's 422 is the only failed request the page made.
            expected = ("422 " + srv.url + "api/groups/north/bundles",
                        "Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)")
            assert [e for e in errors if e not in expected] == [], errors
