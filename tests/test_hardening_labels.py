"""Finding 4 of issue 11: agents cannot rewrite the project's labels, and every label name fits every format.

Before, samples listing 1,000 new labels each grew the project from 4 to 5,007 labels for good; the
queue then carried the whole list in every item (4 MB a page); names such as ``a/b`` or
``line1\\nline2`` broke the ImageFolder export and shifted the YOLO ``classes.txt`` indices. Now:
unknown names from agents go to a bounded pending list that a person approves (the samples are
stored), one validator decides which names are possible (config, import, ingest, approval, export),
and a queue page lists the labels once.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import factories
from trainer.server.app import create_app
from trainer.server.config import ProjectConfig, ServerConfig
from trainer.store import Store, incoming
from trainer.store.labels import PENDING_MAX, label_problem
from test_api_auth import BEARER, TOKEN

LABELS = ("circle", "square", "triangle")
BAD = ["a/b", "a\\b", "line1\nline2", "tab\there", "cr\r", "\x00nul", "x\u2028y", "x\x85y", "\x1cfs", ".hidden", "..",
       " lead", "trail ", "", "x" * 65, "\ud800"]
GOOD = ["circle", "traffic light", "Ünïcødé", "a.b", "a-b_c", "x" * 64, "品"]


@pytest.mark.parametrize("name", BAD)
def test_impossible_names(name: str) -> None:
    assert label_problem(name) is not None
    with pytest.raises(ValidationError):
        ProjectConfig(labels=("ok", name))


@pytest.mark.parametrize("name", GOOD)
def test_possible_names(name: str) -> None:
    assert label_problem(name) is None


def _flood(n_samples: int, per: int) -> list:
    return [incoming(factories.sample(frame_id=f"cam-agent-1.gate.{i}", jpeg=factories.jpeg(seed=i),
                                      labels=LABELS + tuple(f"new{i}-{k}" for k in range(per)),
                                      scores=(1.0,) + (0.0,) * (len(LABELS) + per - 1)))
            for i in range(n_samples)]


def test_agents_cannot_add_labels_they_go_to_a_bounded_pending_list(tmp_path: Path) -> None:
    with Store(tmp_path / "s") as store:
        store.configure_project(task="classification", labels=LABELS)
        store.ingest_samples(_flood(5, 100))  # 500 unknown names
        assert store.project().labels == LABELS and store.count() == 5
        pending = store.pending_labels()
        assert len(pending) == PENDING_MAX and all(p["samples"] == 1 for p in pending)
        counters = store.counters()
        assert counters["ingest_unknown_labels"] == 500 and counters["pending_labels_dropped"] == 500 - PENDING_MAX
        store.ingest_samples([incoming(factories.sample(frame_id="cam-agent-1.gate.x", labels=("circle", "a/b", "ok\nno"),
                                                        scores=(1.0, 0.0, 0.0)))])
        assert store.counters()["ingest_invalid_labels"] == 2 and store.project().labels == LABELS


def test_a_fresh_project_adopts_no_agent_labels_they_wait_for_approval(tmp_path: Path) -> None:
    """Before, the first sample of a project without labels defined them (up to 1,000 names)."""
    with Store(tmp_path / "s") as store:
        store.ingest_samples([incoming(factories.sample(labels=("cat", "a/b", "dog"), scores=(0.5, 0.25, 0.25)))])
        assert store.project().labels == () and store.count() == 1
        assert sorted(p["name"] for p in store.pending_labels()) == ["cat", "dog"]
        junk = tuple(f"junk{i}" for i in range(1000))
        store.ingest_samples([incoming(factories.sample(frame_id="cam-agent-1.gate.2", labels=junk,
                                                        scores=(1 / 1000,) * 1000))])
        assert store.project().labels == () and len(store.pending_labels()) == PENDING_MAX
        assert store.approve_label("dog").labels == ("dog",)
        assert store.approve_label("cat").labels == ("dog", "cat")


@pytest.fixture
def client(tmp_path: Path):
    config = ServerConfig.model_validate({"mqtt": {"enabled": False}, "store": {"data_dir": str(tmp_path / "data")},
                                          "project": {"task": "classification", "labels": list(LABELS)},
                                          "import_root": str(tmp_path / "imports")})
    with TestClient(create_app(config, TOKEN)) as c:
        yield c


def test_pending_labels_are_approved_or_dismissed_by_a_person(client: TestClient) -> None:
    store = client.app.state.service.store
    store.ingest_samples(_flood(2, 2))
    r = client.get("/api/labels/pending", headers=BEARER)
    assert r.status_code == 200 and {p["name"] for p in r.json()["pending"]} == {"new0-0", "new0-1", "new1-0", "new1-1"}
    r = client.post("/api/labels/approve", headers=BEARER, json={"name": "new0-0"})
    assert r.status_code == 200 and r.json()["labels"] == [*LABELS, "new0-0"]
    assert client.post("/api/labels/dismiss", headers=BEARER, json={"name": "new1-1"}).status_code == 200
    assert {p["name"] for p in client.get("/api/labels/pending", headers=BEARER).json()["pending"]} == {"new0-1", "new1-0"}
    assert client.post("/api/labels/approve", headers=BEARER, json={"name": "never-seen"}).status_code == 404
    assert client.post("/api/labels/approve", headers=BEARER, json={"name": "a/b"}).status_code == 422


def test_the_queue_lists_the_labels_once_per_page(client: TestClient) -> None:
    store = client.app.state.service.store
    store.ingest_samples(_flood(3, 0))
    page = client.get("/api/queue", headers=BEARER).json()
    assert page["labels"] == list(LABELS) and len(page["items"]) == 3
    assert all("labels" not in item for item in page["items"])


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8))


def test_an_import_skips_examples_with_impossible_labels(client: TestClient, tmp_path: Path) -> None:
    ds = tmp_path / "imports" / "ds"
    for i, name in enumerate(("circle", "line1\nline2", " square", "ok-new")):
        _image(ds / name / f"{i}.png", i)
    r = client.post("/api/import", headers=BEARER, json={"format": "imagefolder", "path": "ds"})
    assert r.status_code == 200 and r.json()["added"] == 2, r.text
    assert sum("invalid label" in why for _p, why in r.json()["skipped"]) == 2
    assert client.get("/api/project", headers=BEARER).json()["labels"] == [*LABELS, "ok-new"]


@pytest.mark.parametrize("fmt", ["imagefolder", "yolo", "coco", "voc"])
def test_export_refuses_a_store_holding_an_impossible_label(client: TestClient, tmp_path: Path, fmt: str) -> None:
    # A store written before the validator may hold one: the export names it instead of writing a broken set.
    store = client.app.state.service.store
    store.write(lambda db: db.execute("UPDATE projects SET labels = ? WHERE id = 1",
                                      [json.dumps([*LABELS, "line1\nline2"])]))
    r = client.get("/api/export", headers=BEARER, params={"format": fmt})
    assert r.status_code == 422 and "line1" in r.json()["detail"], r.text


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_the_dataset_page_lets_a_person_approve_or_dismiss_reported_labels(tmp_path: Path) -> None:
    from test_ui_review import browser_page, login, running_server

    with running_server(tmp_path / "data", "classification", labels=LABELS) as (base, store):
        store.ingest_samples(_flood(1, 2))  # new0-0, new0-1
        with browser_page() as (page, errors):
            login(page, base, "/dataset")
            page.wait_for_selector("#pending-table tr[data-label='new0-0']")
            assert page.locator("#pending-table tbody tr").count() == 2
            page.click("#pending-table tr[data-label='new0-0'] button.approve")
            page.wait_for_selector("#pending-table tr[data-label='new0-0']", state="detached")
            assert store.project().labels == (*LABELS, "new0-0")
            page.click("#pending-table tr[data-label='new0-1'] button.dismiss")
            page.wait_for_selector("#pending-panel.hidden", state="attached")
            assert store.pending_labels() == [] and store.project().labels == (*LABELS, "new0-0")
            assert not errors, errors
