"""The review page with a teacher: it shows where a pre-label came from, T switches source, Enter accepts.

Headless Chromium against the real server with a real ONNX teacher (agent_helpers.make_detector);
skipped without Chromium, like tests/test_ui_review.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_helpers import make_detector
from test_assist import PROJECT, frame, ingest_detections, wait_for
from test_ui_review import _require_chromium, browser_page, login, running_server, wait_item

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

SOURCE = "document.getElementById('prelabel-source')"


def source_is(page, source: str) -> None:
    page.wait_for_function(f"s => {SOURCE} && {SOURCE}.dataset.source === s", arg=source)


def test_review_page_shows_and_accepts_the_teachers_prelabel(tmp_path: Path) -> None:
    _require_chromium()
    assist = {"model": str(make_detector(tmp_path / "blobs.onnx")), "label_map": {"blob": "vehicle"},
              "min_score": 0.5, "poll_s": 0.1}
    with running_server(tmp_path / "data", "detection", PROJECT, assist=assist) as (base, store):
        # edge boxes (factories.detection_sample): vehicle 0.55 and person 0.48, elsewhere than the teacher's
        ids = ingest_detections(store, {"a": frame([(1, 2)]), "b": frame([(3, 3)])})
        wait_for(lambda: store.counters().get("assist_done") == 2)
        with browser_page() as (page, errors):
            login(page, base)
            first = wait_item(page)
            page.wait_for_function("() => window.edgeloopReview.editor && window.edgeloopReview.editor.loaded")
            source_is(page, "teacher")
            assert "teacher blobs v1" in page.inner_text("#prelabel-source")
            assert "teacher blobs v1 · " in page.inner_text("#source")
            assert page.locator("#overlay g.box").count() == 1  # the teacher's one box
            page.keyboard.press("t")
            source_is(page, "edge")
            assert "edge model shapes v3" in page.inner_text("#prelabel-source")
            assert page.locator("#overlay g.box").count() == 1  # the edge's 0.55 box; 0.48 is under 50%
            page.keyboard.press("t")
            source_is(page, "teacher")
            page.keyboard.press("Enter")
            wait_item(page, first)
            assert not errors, errors

        accepted = store.item(first)
        assert accepted.status == "labeled" and accepted.labeled_by == "reviewer"
        assert [e["action"] for e in store.label_history(first)] == ["accept_prelabel"]
        teacher_boxes = [{k: b[k] for k in ("x1", "y1", "x2", "y2", "label")} for b in accepted.prelabel["boxes"]]
        assert accepted.boxes == teacher_boxes and first in ids.values()


def test_review_page_says_when_the_teacher_did_not_load(tmp_path: Path) -> None:
    _require_chromium()
    bad = tmp_path / "teacher.onnx"
    bad.write_text("not onnx")
    with running_server(tmp_path / "data", "detection", PROJECT, assist={"model": str(bad)}) as (base, store):
        ingest_detections(store, {"a": frame([(1, 2)])})
        with browser_page() as (page, errors):
            login(page, base)
            wait_item(page)
            page.wait_for_selector("#assist-notice:not(.hidden)")
            assert "teacher model is not loaded" in page.inner_text("#assist-notice")
            assert "teacher.onnx is not a loadable ONNX model" in page.inner_text("#assist-notice")
            source_is(page, "edge")  # the edge model's pre-labels still show
            assert not errors, errors
