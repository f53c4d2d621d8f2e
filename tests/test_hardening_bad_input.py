"""Finding 6 of issue 11: bad input answered with a 4xx in the canonical error shape, never a 500.

Each case was a 500 before: the queue ranking on imported examples (no capture time), non-finite
numbers and lone surrogates in JSON bodies (the 422 echoed them and failed to render), import paths
with a NUL byte or 1,024 characters, a YOLO data.yaml that is a list, broken or carries a Python tag,
and a non-ASCII digit as an example id.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from trainer.server.app import create_app
from trainer.server.config import ServerConfig
from test_api_auth import BEARER, TOKEN, seed

JSON = {**BEARER, "Content-Type": "application/json"}
# Python's json module reads all of these; none of them is JSON (RFC 8259) or survives a JSON response.
BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]
SURROGATES = ['"\\ud800"', '"a\\udfffb"']


def _image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "imports"
    for i, label in enumerate(("circle", "square", "circle")):
        _image(root / "folder" / label / f"{i}.jpg", i)
    yolo = root / "yolo"
    _image(yolo / "images" / "a.jpg")
    (yolo / "labels").mkdir(parents=True)
    (yolo / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return root


@pytest.fixture
def client(tmp_path: Path, root: Path):
    config = ServerConfig.model_validate({"mqtt": {"enabled": False}, "http": {"max_body_bytes": 64 * 1024},
                                          "store": {"data_dir": str(tmp_path / "data")}, "import_root": str(root)})
    with TestClient(create_app(config, TOKEN), raise_server_exceptions=False) as c:
        yield c


def _client_error(r, what) -> dict:
    assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])
    body = r.json()
    assert "detail" in body, (what, body)
    return body


def test_labeled_queue_after_an_import(client: TestClient) -> None:
    seed(client.app.state.service.store)
    r = client.post("/api/import", headers=BEARER, json={"format": "imagefolder", "path": "folder"})
    assert r.status_code == 200 and r.json()["added"] == 3, r.text
    r = client.get("/api/queue", headers=BEARER, params={"status": "labeled"})
    assert r.status_code == 200, r.text


def _json_operations(client: TestClient) -> list[tuple[str, str]]:
    subst = {"{item_id}": "1", "{name}": "shapes", "{version}": "1"}
    out = []
    for path, ops in client.app.openapi()["paths"].items():
        for method, op in ops.items():
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                for k, v in subst.items():
                    path = path.replace(k, v)
                out.append((method.upper(), path))
    return out


def test_non_finite_numbers_and_lone_surrogates_in_every_json_body(client: TestClient) -> None:
    seed(client.app.state.service.store)
    ops = _json_operations(client)
    assert ("POST", "/api/items/1/label") in ops and ("POST", "/api/import") in ops and len(ops) >= 5
    bodies = [f'{{"action": "label", "boxes": [{{"x1": {n}, "y1": 0, "x2": 1, "y2": 1, "label": "circle"}}]}}'
              for n in BAD_NUMBERS]
    bodies += [f'{{"action": "label", "label": {s}}}' for s in SURROGATES]
    bodies += [f'{{"format": "yolo", "path": {s}}}' for s in SURROGATES]
    bodies += [f'{{"to": {n}}}' for n in BAD_NUMBERS] + [f'{{"token": {s}}}' for s in SURROGATES]
    bodies += [f'[{n}]' for n in BAD_NUMBERS] + [f'{{{s}: 1}}' for s in SURROGATES]
    for method, path in ops:
        for body in bodies:
            r = client.request(method, path, headers=JSON, content=body.encode())
            _client_error(r, (method, path, body))
    # The label endpoint with a surrogate must not have stored anything.
    assert client.get("/api/items/1", headers=BEARER).json()["status"] == "pending_review"


def test_validation_errors_render_whatever_the_input(client: TestClient) -> None:
    seed(client.app.state.service.store)
    for body in ('{"action": "label", "label": "' + "x" * 65 + '"}', '{"action": 1e308}', '{"action": [1, 2]}'):
        r = client.post("/api/items/1/label", headers=JSON, content=body.encode())
        assert r.status_code == 422 and r.json()["detail"], r.text


@pytest.mark.parametrize("path", ["fo\x00lder", "folder/\x00", "a" * 1024, "a/" * 511 + "b", "folder/" + "b" * 300])
def test_import_paths_that_cannot_exist(client: TestClient, path: str) -> None:
    r = client.post("/api/import", headers=BEARER, json={"format": "imagefolder", "path": path})
    _client_error(r, path)
    r = client.post("/api/import", headers=BEARER, json={"format": "coco", "path": "folder", "images": path})
    _client_error(r, ("images", path))


@pytest.mark.parametrize("yaml_text", ["- a\n- b\n", "names: [a, b\n", "names: !!python/object/apply:os.system ['true']\n",
                                       "!!python/name:os.system\n", "names: {0: a, x: b}\n", "names: 5\n", "", "42\n"])
def test_yolo_data_yaml_that_is_not_a_mapping_of_names(client: TestClient, root: Path, yaml_text: str) -> None:
    (root / "yolo" / "data.yaml").write_text(yaml_text)
    r = client.post("/api/import", headers=BEARER, json={"format": "yolo", "path": "yolo"})
    body = _client_error(r, yaml_text)
    assert r.status_code == 422 and isinstance(body["detail"], str)


def test_lineage_of_a_non_ascii_digit(client: TestClient, tmp_path: Path) -> None:
    from trainer.publish.registry import Registry

    registry = Registry(tmp_path / "registry")
    client.app.state.registry = registry  # lineage needs a registry; this server has no [publish]
    try:
        for raw in ("%C2%B2", "%D9%A3", "%EF%BC%91", "1%C2%B2"):  # superscript two, Arabic-Indic three, fullwidth one
            r = client.get(f"/api/models/by-example/{raw}", headers=BEARER)
            assert r.status_code < 500, (raw, r.text)
            assert r.status_code == 404 or r.json()["provenance"] is None, (raw, r.text)
    finally:
        registry.close()


def test_a_symlink_loop_under_the_import_root(client: TestClient, root: Path) -> None:
    (root / "loop1").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop1")
    for r in (client.post("/api/import", headers=BEARER, json={"format": "imagefolder", "path": "loop1"}),
              client.post("/api/import", headers=BEARER, json={"format": "coco", "path": "folder", "images": "loop1"}),
              client.post("/api/import/unlabelled", headers=BEARER, json={"path": "loop1/x"})):
        assert r.status_code == 422 and "symlink loop" in _client_error(r, "loop")["detail"], r.text


@pytest.mark.parametrize("name,content", [("classes.txt", "car\nb\xfcs\n".encode("latin-1")),
                                          ("data.yaml", "names: [car, b\xfcs]\n".encode("latin-1")),
                                          ("classes.txt", b"car\n\nbus\n"),
                                          ("data.yaml", b"names: [car, {x: 1}]\n")])
def test_yolo_class_names_that_are_not_utf8_or_leave_a_gap(client: TestClient, root: Path, name: str,
                                                         content: bytes) -> None:
    (root / "yolo" / name).write_bytes(content)
    r = client.post("/api/import", headers=BEARER, json={"format": "yolo", "path": "yolo"})
    assert r.status_code == 422, (content, r.status_code, r.text[:300])
    assert any(w in r.json()["detail"] for w in ("not UTF-8", "line 2 is empty", "plain value")), r.text


def test_coco_category_names_must_be_strings(client: TestClient, root: Path) -> None:
    coco = root / "coco"
    _image(coco / "images" / "a.jpg")
    (coco / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 24}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}],
        "categories": [{"id": 1, "name": {"x": 1}}]}))
    r = client.post("/api/import", headers=BEARER, json={"format": "coco", "path": "coco/ann.json"})
    assert r.status_code == 422 and "category name must be a string" in r.json()["detail"], r.text
    assert client.get("/api/project", headers=BEARER).json()["labels"] == []
