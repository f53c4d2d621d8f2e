"""The dataset and fleet pages in Chromium, and the docs' screenshots.

``test_dataset_and_fleet_pages`` always runs (with Chromium). The screenshot
capture runs only when asked, because it rewrites files in the repository::

    EDGELOOP_SCREENSHOTS=docs/screenshots .venv/bin/python -m pytest tests/test_ui_screenshots.py -k capture
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from test_ui_review import browser_page, fill_store, login, running_server, wait_item
from trainer.synthetic.shapes import CLASSES

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


def test_dataset_and_fleet_pages(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", "classification") as (base, store):
        fill_store(store, tmp_path, "classification", pending=2, labelled=20, size=64)
        stats = store.stats()
        with browser_page() as (page, errors):
            login(page, base, "/dataset")
            page.wait_for_selector("#counts tbody tr")
            rows = page.locator("#counts tbody tr")
            assert rows.count() == len(CLASSES)
            for i, label in enumerate(CLASSES):
                cells = rows.nth(i).locator("td")
                want = stats["counts"][label]
                assert cells.nth(0).inner_text().strip() == label
                assert [int(cells.nth(k).inner_text()) for k in (1, 2, 3, 4)] == \
                    [want["train"], want["val"], want["test"], want["unassigned"]]
            # 20 imports with every 9th stored three times: clusters of 3, each thumbnail a real image.
            assert stats["duplicate_clusters"]
            page.wait_for_function("() => [...document.querySelectorAll('.cluster img')].every(i => i.complete"
                                   " && i.naturalWidth > 0) && document.querySelectorAll('.cluster img').length > 0")
            assert page.locator(".cluster").count() == len(stats["duplicate_clusters"])
            # 20 examples over three classes: every class is under 10, so the page warns.
            assert page.locator(".notice.warn").count() == len(stats["warnings"]) > 0
            assert "300" in page.locator(".notice.info").inner_text()

            page.click("nav a[href='/fleet']")
            page.wait_for_selector("#fleet-body tr[data-agent]")
            fleet = {a["agent_id"]: a for a in store.fleet()}
            assert page.locator("#fleet-body tr[data-agent]").count() == len(fleet)
            offline = page.locator("#fleet-body tr[data-agent='line-3']")
            assert "offline" in offline.inner_text() and "belt" in offline.inner_text()
            assert "0.1.0 · cpu" in offline.inner_text()  # software version and execution provider
            assert "2 of 3 agents online" in page.locator("#fleet-summary").inner_text()
            assert not errors, errors


def shot(page, path: Path, full_page: bool = False) -> None:
    """A screenshot as a 256-colour PNG: a third of the size, no visible loss for UI."""
    page.screenshot(path=str(path), full_page=full_page)
    img = Image.open(path).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


@pytest.mark.skipif(not os.environ.get("EDGELOOP_SCREENSHOTS"),
                    reason="set EDGELOOP_SCREENSHOTS=DIR to (re)write the docs' screenshots")
def test_capture_screenshots(tmp_path: Path) -> None:
    out = Path(os.environ["EDGELOOP_SCREENSHOTS"])
    out.mkdir(parents=True, exist_ok=True)
    with running_server(tmp_path / "cls", "classification") as (base, store):
        fill_store(store, tmp_path, "classification", pending=40, labelled=160, size=224, seed=3,
                   rare="triangle")
        with browser_page((1440, 860)) as (page, errors):
            login(page, base)
            first = wait_item(page)
            for key in ("1", "Enter", "2", "Enter", "3"):  # some progress towards the round
                page.keyboard.press(key)
                first = wait_item(page, first)
            page.wait_for_timeout(1600)  # let the "labelled" toast fade
            shot(page, out / "review-classification.png")
            page.keyboard.press("?")
            shot(page, out / "review-help.png")
            page.goto(base + "/dataset")
            page.wait_for_selector(".cluster img")
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # thumbnails load lazily
            page.wait_for_function("() => document.querySelectorAll('.cluster img').length > 0 && [...document"
                                   ".querySelectorAll('.cluster img')].every(i => i.complete)")
            shot(page, out / "dataset.png", full_page=True)
            page.goto(base + "/fleet")
            page.wait_for_selector("#fleet-body tr[data-agent]")
            shot(page, out / "fleet.png")
            assert not errors, errors
    with running_server(tmp_path / "det", "detection") as (base, store):
        fill_store(store, tmp_path, "detection", pending=12, labelled=0, size=320, seed=5)
        with browser_page((1440, 860)) as (page, errors):
            login(page, base)
            item = store.item(wait_item(page))
            r = page.locator("#item-image").bounding_box()
            # Draw the box the threshold hid, as a reviewer fixing a miss would.
            hidden = [b for b in item.prediction["boxes"] if b["score"] < 0.5] or \
                [{"x1": 0.04, "y1": 0.06, "x2": 0.2, "y2": 0.24, "label": CLASSES[0]}]
            b = hidden[0]
            page.mouse.move(r["x"] + (b["x1"] - 0.01) * r["width"], r["y"] + (b["y1"] - 0.01) * r["height"])
            page.mouse.down()
            page.mouse.move(r["x"] + (b["x2"] + 0.01) * r["width"], r["y"] + (b["y2"] + 0.01) * r["height"], steps=5)
            page.mouse.up()
            page.keyboard.press(str(CLASSES.index(b["label"]) + 1))
            shot(page, out / "review-detection.png")
            assert not errors, errors
