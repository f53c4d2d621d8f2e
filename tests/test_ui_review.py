"""The review UI driven in a real headless Chromium against the real server.

The server runs under uvicorn on a free port with a temporary data directory
whose queue is filled through the Store with generated edge samples; the
browser logs in, labels by keyboard and draws a box with the mouse, and the
test then reads the database through the Store.
"""

from __future__ import annotations

import io
import math
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protocol import Box, Sample, Status, Telemetry
from trainer.store import incoming, new_example
from trainer.synthetic.shapes import CLASSES, ShapesGenerator

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TOKEN = "ui-test-token-0123456789abcdef"
AGENTS = (("dock-cam-01", ("north", "south")), ("gate-cam-02", ("gate",)), ("line-3", ("belt",)))


# ---------------------------------------------------------------- data -----
def _jpeg(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _class_prediction(rng: np.random.Generator, truth: int) -> tuple[tuple[float, ...], str, str, float]:
    """Scores of a plausible, sometimes wrong model; the strategy that picked it and why."""
    logits = rng.normal(0.0, 0.6, len(CLASSES))
    favoured = truth if rng.uniform() < 0.6 else int(rng.integers(len(CLASSES)))
    logits[favoured] += rng.uniform(0.3, 1.6)
    p = np.exp(logits) / np.exp(logits).sum()
    top2 = np.sort(p)[::-1][:2]
    margin = float(top2[0] - top2[1])
    if margin < 0.2:
        return tuple(float(x) for x in p), "margin", f"margin {margin:.2f} < 0.20", 1.0 - margin
    entropy = float(-(p * np.log(p)).sum() / math.log(len(CLASSES)))
    return tuple(float(x) for x in p), "entropy", f"entropy {entropy:.2f} > 0.60", entropy


def _box_prediction(rng: np.random.Generator, truth) -> tuple[tuple[Box, ...], str, str, float]:
    boxes = []
    for b in truth:
        j = rng.normal(0.0, 0.012, 4)
        x1, y1 = max(0.0, b.x1 + j[0]), max(0.0, b.y1 + j[1])
        x2, y2 = min(1.0, max(x1 + 0.02, b.x2 + j[2])), min(1.0, max(y1 + 0.02, b.y2 + j[3]))
        label = CLASSES.index(b.label) if rng.uniform() < 0.8 else int(rng.integers(len(CLASSES)))
        boxes.append(Box(x1, y1, x2, y2, float(rng.uniform(0.42, 0.97)), label))
    band = sum(1 for b in boxes if 0.4 <= b.score <= 0.6)
    return tuple(boxes), "threshold_band", f"{band} of {len(boxes)} boxes in [0.40, 0.60]", band / max(1, len(boxes))


def edge_samples(tmp: Path, task: str, n: int, rng: np.random.Generator, size: int) -> list[Sample]:
    """``n`` generated frames with the prediction an agent would have sent."""
    gen = ShapesGenerator(task=task, size=size, drift=0.5)
    now = time.time()
    out = []
    for i, ex in enumerate(gen.generate(n, rng, tmp / f"gen-{task}")):
        data = _jpeg(ex.image_path)
        agent, cameras = AGENTS[i % len(AGENTS)]
        if task == "classification":
            scores, strategy, reason, unc = _class_prediction(rng, CLASSES.index(ex.label))
            boxes: tuple[Box, ...] = ()
        else:
            boxes, strategy, reason, unc = _box_prediction(rng, ex.boxes)
            scores = ()
        out.append(Sample(
            agent_id=agent, camera_id=cameras[i % len(cameras)], frame_id=f"{agent}.{task[:3]}.{i:06d}",
            captured_at=now - float(rng.uniform(60, 2 * 86400)), model_name="shapes",
            model_version=3 + i % 2, task=task, labels=CLASSES, scores=scores, boxes=boxes, uncertainty=unc,
            strategy=strategy, reason=reason, width=size, height=size, jpeg=data))
    return out


def fill_store(store, tmp: Path, task: str, *, pending: int, labelled: int, size: int, seed: int = 7,
               rare: str | None = None) -> None:
    """A queue of edge samples, labelled imports across splits (some near-duplicates) and a fleet.

    ``rare`` keeps only one in twelve labelled images of that class (classification), so the
    dataset page has an imbalance to warn about.
    """
    rng = np.random.default_rng(seed)
    store.configure_project(name=f"shapes-{task[:3]}", task=task, labels=CLASSES, batch_size=40)
    store.ingest_samples([incoming(sample) for sample in edge_samples(tmp, task, pending, rng, size)])
    if labelled:
        gen = ShapesGenerator(task=task, size=size)
        examples = gen.generate(labelled, rng, tmp / f"labelled-{task}")
        new = []
        for i, ex in enumerate(examples):
            if rare is not None and ex.label == rare and i % 12:
                continue
            # Every 9th image is stored three times, re-encoded: a near-duplicate cluster.
            copies = 3 if i % 9 == 0 else 1
            for c in range(copies):
                img = Image.open(ex.image_path).convert("RGB")
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=90 - 12 * c)
                split = ("train", "train", "train", "train", "train", "train", "train", "val", "test", None)[i % 10]
                new.append(new_example(buf.getvalue(), label=ex.label, boxes=ex.boxes, split=split,
                                       source="import", origin=f"gen:{task}:{i}:{c}"))
        store.add_examples(new, task=task, labels=CLASSES)
    now = time.time()
    statuses = [Status(agent_id=a, state="offline" if a == "line-3" else "online", at=now - 30, software_version="0.1.0",
                       model_name="shapes", model_version=4 if a == "dock-cam-01" else 3,
                       model_state="updating" if a == "gate-cam-02" else "ok", cameras=cams,
                       cohorts=("canary",) if a == "dock-cam-01" else ("stable",), detail="")
                for a, cams in AGENTS]
    telemetry = [Telemetry(agent_id=a, at=now - 5, period_s=10.0, model_version=3, fps=12.5 + 5 * k,
                           latency_p50_ms=4.0 + k, latency_p99_ms=9.0 + k, frames=10_000, sampled=40,
                           inference_errors=0, outbox_depth=3 * k, outbox_bytes=60_000 * k, drops={},
                           conf_hist={}, camera_fps={c: 12.5 + 5 * k for c in cams}, provider="cpu")
                 for k, (a, cams) in enumerate(AGENTS)]
    store.record_fleet(statuses, telemetry)


# -------------------------------------------------------------- server -----
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(data_dir: Path, task: str, labels: tuple[str, ...] = CLASSES, **sections):
    """The real app under uvicorn in a thread; yields (base_url, store). ``sections``: more config tables."""
    import uvicorn

    from trainer.server.app import create_app
    from trainer.server.config import ServerConfig

    config = ServerConfig.model_validate({
        "mqtt": {"enabled": False},
        "http": {"host": "127.0.0.1", "port": _free_port(), "token": TOKEN},
        "store": {"data_dir": str(data_dir)},
        "project": {"task": task, "labels": list(labels)},
        **sections,
    })
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=config.http.port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-ui-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.http.port}", app.state.service.store
    finally:
        server.should_exit = True
        thread.join(15)


# ------------------------------------------------------------- browser -----
def _require_chromium() -> None:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("EDGELOOP_REQUIRE_CHROMIUM"):
            pytest.fail(f"EDGELOOP_REQUIRE_CHROMIUM is set but {CHROMIUM} is absent (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium); set EDGELOOP_REQUIRE_CHROMIUM to fail instead")


@contextmanager
def browser_page(viewport=(1280, 800)):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.set_default_timeout(10_000)
            yield page, errors
        finally:
            browser.close()


def login(page, base: str, path: str = "/review") -> None:
    page.goto(base + path)
    page.wait_for_url("**/login?next=*")
    page.fill("#user", "reviewer")  # with the bootstrap token, the name the labels are recorded under
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(base + path)


def current_id(page) -> int | None:
    return page.evaluate("window.edgeloopReview.current && window.edgeloopReview.current.id")


def wait_item(page, previous: int | None = None) -> int:
    """Wait until an item other than ``previous`` is shown with its image loaded."""
    page.wait_for_function(
        "prev => { const s = window.edgeloopReview; const img = document.getElementById('item-image');"
        " return s && s.current && s.current.id !== prev && !s.busy && img && img.complete && img.naturalWidth > 0; }",
        arg=previous)
    return current_id(page)


def drag(page, rect: dict, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A mouse drag between two points given in image fractions."""
    page.mouse.move(rect["x"] + start[0] * rect["width"], rect["y"] + start[1] * rect["height"])
    page.mouse.down()
    for t in (0.3, 0.7, 1.0):
        page.mouse.move(rect["x"] + (start[0] + t * (end[0] - start[0])) * rect["width"],
                        rect["y"] + (start[1] + t * (end[1] - start[1])) * rect["height"])
    page.mouse.up()


# --------------------------------------------------------------- tests -----
def test_classification_by_keyboard(tmp_path: Path) -> None:
    _require_chromium()
    data_dir = tmp_path / "data"
    with running_server(data_dir, "classification") as (base, store):
        fill_store(store, tmp_path, "classification", pending=8, labelled=0, size=96)
        with browser_page() as (page, errors):
            login(page, base)
            first = wait_item(page)
            # Prefetch: the next three items are fetched and their images decoded before they are needed.
            page.wait_for_function("() => { const b = window.edgeloopReview.buffer; return b.length >= 3 &&"
                                   " b.slice(0, 3).every(i => i._img && i._img.complete && i._img.naturalWidth > 0); }")
            page.keyboard.press("2")  # label as the second class
            second = wait_item(page, first)
            page.wait_for_selector("#flash.show")
            assert page.locator("#flash").inner_text() == f"Labelled “{CLASSES[1]}” · U to undo"
            predicted = store.item(second).predicted_label
            page.keyboard.press("Enter")  # accept the prediction
            third = wait_item(page, second)
            page.keyboard.press("x")  # reject
            fourth = wait_item(page, third)
            page.keyboard.press("s")  # skip
            fifth = wait_item(page, fourth)
            assert store.item(fourth).status == "skipped"
            page.keyboard.press("u")  # undo the skip: the skipped item is back on screen
            assert wait_item(page, fifth) == fourth
            page.wait_for_function("() => document.querySelector('#progress b') &&"
                                   " document.querySelector('#progress b').textContent === '2'")
            assert not errors, errors

        one, two, three, four = (store.item(i) for i in (first, second, third, fourth))
        assert (one.status, one.label, one.labeled_by) == ("labeled", CLASSES[1], "reviewer")
        assert (two.status, two.label) == ("labeled", predicted)
        assert three.status == "rejected" and three.label is None
        assert four.status == "pending_review" and four.labeled_by is None
        assert store.corrected_since_last_round() == 2
        assert len({first, second, third, fourth, fifth}) == 5


def test_detection_draw_a_box(tmp_path: Path) -> None:
    _require_chromium()
    with running_server(tmp_path / "data", "detection") as (base, store):
        fill_store(store, tmp_path, "detection", pending=3, labelled=0, size=128)
        with browser_page() as (page, errors):
            login(page, base)
            item_id = wait_item(page)
            item = store.item(item_id)
            shown = [b for b in item.prediction["boxes"] if b["score"] >= 0.5]
            assert shown, "the generated item should come with pre-labels to delete"
            page.wait_for_function("() => window.edgeloopReview.editor && window.edgeloopReview.editor.loaded")
            assert page.locator("#overlay g.box").count() == len(shown)
            # Shortcuts still work with the threshold slider focused (it is not a text field).
            page.focus("#prediction input[type=range]")
            # Delete every pre-label (Tab selects, Delete removes), then draw one box.
            for _ in shown:
                page.keyboard.press("Tab")
                page.keyboard.press("Delete")
            r = page.locator("#item-image").bounding_box()
            drag(page, r, (0.2, 0.25), (0.7, 0.8))
            page.keyboard.press("3")  # the new box is selected: make it the third class
            page.keyboard.press("]")  # next class wraps round to the first...
            page.keyboard.press("[")  # ...and back to the third
            page.wait_for_function("() => document.querySelectorAll('#overlay g.box').length === 1")
            # Move it right by a tenth of the image, then drag its bottom-right corner out.
            drag(page, r, (0.45, 0.5), (0.55, 0.5))
            drag(page, r, (0.8, 0.8), (0.9, 0.9))
            page.keyboard.press("Enter")
            next_id = wait_item(page, item_id)
            # Enter on untouched pre-labels stores exactly the boxes shown.
            page.wait_for_function("() => window.edgeloopReview.editor && window.edgeloopReview.editor.loaded")
            page.keyboard.press("Enter")
            wait_item(page, next_id)
            assert not errors, errors

        accepted = store.item(next_id)
        want = [{k: b[k] for k in ("x1", "y1", "x2", "y2", "label")} for b in accepted.prediction["boxes"]
                if b["score"] >= 0.5]
        assert accepted.status == "labeled"
        assert [b["label"] for b in accepted.boxes] == [b["label"] for b in want]
        for got, exp in zip(accepted.boxes, want):
            assert all(abs(got[k] - exp[k]) < 1e-4 for k in ("x1", "y1", "x2", "y2")), (got, exp)
        saved = store.item(item_id)
        assert saved.status == "labeled" and saved.labeled_by == "reviewer"
        assert len(saved.boxes) == 1
        box = saved.boxes[0]
        assert box["label"] == CLASSES[2]
        for got, want in zip((box["x1"], box["y1"], box["x2"], box["y2"]), (0.3, 0.25, 0.9, 0.9)):
            assert abs(got - want) < 0.02, saved.boxes


MANY = ("ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay", "koi", "zebra")


def test_type_to_find_one_of_many_classes(tmp_path: Path) -> None:
    _require_chromium()
    with running_server(tmp_path / "data", "classification", MANY) as (base, store):
        rng = np.random.default_rng(2)
        samples = [replace(sample, labels=MANY, scores=tuple(float(x) for x in rng.dirichlet(np.ones(len(MANY)))))
                   for sample in edge_samples(tmp_path, "classification", 2, rng, 64)]
        store.ingest_samples([incoming(s) for s in samples])
        with browser_page() as (page, errors):
            login(page, base)
            item_id = wait_item(page)
            keys = page.locator("#scores .score-row .key").all_inner_texts()
            assert keys == [str(i) for i in range(1, 10)] + ["", "", ""]  # one key each for the first nine
            page.keyboard.press("/")
            page.keyboard.type("zeb")
            assert page.locator("#scores .score-row").count() == 1
            page.keyboard.press("Enter")
            last = wait_item(page, item_id)
            page.keyboard.press("1")  # the last item: the queue is now empty
            page.wait_for_selector("#stage .empty")
            assert "The queue is empty" in page.locator("#stage").inner_text()
            page.keyboard.press("u")  # undo brings it back even from the empty state
            assert wait_item(page, None) == last
            assert not errors, errors
        assert store.item(item_id).label == "zebra"
        assert store.item(last).status == "pending_review"
