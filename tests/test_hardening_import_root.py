"""Finding 3 of issue 11: an import reads nothing outside ``import_root``, even through a symlink below it.

Before, only the top-level path was resolved: ``import_root/ds/dog -> /elsewhere`` made ``import ds``
read the outside images into the store, and ``/api/export`` handed them out. Every image is now resolved
on its own; one outside the root is refused, counted and reported, and annotation files or folders
that resolve outside refuse the import.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from trainer.server.app import create_app
from trainer.server.config import ServerConfig
from test_api_auth import BEARER, TOKEN


def _image(path: Path, seed: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)
    return path.read_bytes()


@pytest.fixture
def layout(tmp_path: Path) -> dict:
    root, outside = tmp_path / "imports", tmp_path / "elsewhere"
    secrets = [_image(outside / f"secret{i}.jpg", 100 + i) for i in range(3)]
    ds = root / "ds"
    _image(ds / "cat" / "c0.jpg", 1)
    _image(ds / "cat" / "c1.jpg", 2)
    (ds / "dog").symlink_to(outside)  # a whole class folder elsewhere
    (ds / "cat" / "c2.jpg").symlink_to(outside / "secret0.jpg")  # one file elsewhere
    _image(root / "shared" / "s.jpg", 3)
    (ds / "cat" / "c3.jpg").symlink_to(root / "shared" / "s.jpg")  # a link that stays inside: fine
    yolo = root / "yolo"
    _image(yolo / "images" / "a.jpg", 4)
    (yolo / "classes.txt").write_text("thing\n")
    (outside / "labels").mkdir()
    (outside / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (yolo / "labels").symlink_to(outside / "labels")
    return {"root": root, "secrets": secrets}


@pytest.fixture
def client(tmp_path: Path, layout: dict):
    config = ServerConfig.model_validate({"mqtt": {"enabled": False}, "store": {"data_dir": str(tmp_path / "data")},
                                          "import_root": str(layout["root"])})
    with TestClient(create_app(config, TOKEN)) as c:
        yield c


def test_images_linked_from_outside_are_refused_and_reported(client: TestClient, layout: dict) -> None:
    r = client.post("/api/import", headers=BEARER, json={"format": "imagefolder", "path": "ds"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["added"] == 3 and out["outside_root"] == 4, out  # c0, c1, c3 in; c2 and dog/secret0-2 out
    reasons = {Path(p).name: why for p, why in out["skipped"]}
    assert {n for n, why in reasons.items() if "outside import_root" in why} == {
        "c2.jpg", "secret0.jpg", "secret1.jpg", "secret2.jpg"}
    export = client.get("/api/export", headers=BEARER, params={"format": "imagefolder"})
    assert export.status_code == 200
    with zipfile.ZipFile(io.BytesIO(export.content)) as z:
        exported = [z.read(n) for n in z.namelist() if not n.endswith("/")]
    assert len(exported) == 3 and not any(s in exported for s in layout["secrets"])


def test_annotations_linked_from_outside_refuse_the_import(client: TestClient) -> None:
    r = client.post("/api/import", headers=BEARER, json={"format": "yolo", "path": "yolo"})
    assert r.status_code == 422 and "outside the import root" in r.json()["detail"], r.text
    assert client.get("/api/dataset/stats", headers=BEARER).json()["total"] == 0
