"""Importers count every box they leave out, and why; the CLI and POST /api/import report the counts.

A VOC import of a real blood-cell set once dropped two zero-area boxes and said ``0 skipped``. Each
format here gets real files with bad boxes, written by the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from test_api_auth import BEARER, TOKEN
from trainer.data import ReadReport, read_coco, read_voc, read_yolo
from trainer.server.app import create_app
from trainer.server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[1]


def _image(path: Path, w: int = 100, h: int = 80) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(len(path.name)).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def _voc(root: Path) -> Path:
    """Two images; a.xml holds a good box, two zero-area boxes, one partly and one wholly outside the image."""
    def obj(name, x1, y1, x2, y2):
        return (f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                f"<ymax>{y2}</ymax></bndbox></object>")
    for stem, objects in (("a", [obj("cell", 11, 11, 40, 40), obj("cell", 50, 20, 50, 30), obj("cell", 5, 9, 25, 9),
                                 obj("cell", 80, 60, 130, 90), obj("cell", 200, 200, 240, 260)]),
                          ("b", [obj("cell", 1, 1, 20, 20)])):
        _image(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>100</width><height>80</height></size>"
            + "".join(objects) + "</annotation>")
    return root


def test_voc_counts_zero_area_and_outside_boxes(tmp_path: Path) -> None:
    report = ReadReport()
    examples = {e.id: e for e in read_voc(_voc(tmp_path / "voc"), report)}
    assert report.read == 2 and report.skipped == []  # images are fine; boxes are not
    assert len(examples["a"].boxes) == 2 and len(examples["b"].boxes) == 1
    assert report.boxes_read == 3 and report.boxes_clipped == 1
    assert report.boxes_dropped == {"zero-area": 2, "outside the image": 1}
    assert [w for w, _ in report.box_notes] == ["a.xml object 2", "a.xml object 3", "a.xml object 5"]
    assert "3 boxes kept, 3 dropped (outside the image: 1, zero-area: 2), 1 clipped" in report.summary()
    clipped = max(examples["a"].boxes, key=lambda b: b.x1)
    assert (clipped.x2, clipped.y2) == (1.0, 1.0)


def test_yolo_counts_out_of_range_values(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    _image(root / "images" / "a.jpg")
    _image(root / "images" / "b.jpg")
    (root / "classes.txt").write_text("car\nbus\n")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n"      # fine
        "1 0.95 0.5 0.2 0.2\n"     # sticks out on the right: clipped, kept
        "0 1.3 0.5 0.2 0.2\n"      # wholly right of the image
        "0 0.5 -0.4 0.3 0.3\n"     # wholly above it
        "1 0.5 0.5 -0.1 0.2\n"     # negative width
        "0 0.5 0.5 0.0 0.2\n"      # zero width
        "7 0.5 0.5 0.2 0.2\n"      # class 7 of 2
        "0 nan 0.5 0.2 0.2\n")     # not a number
    (root / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 x\n")  # malformed: the file is not trusted
    report = ReadReport()
    examples = read_yolo(root, report)
    assert [e.id for e in examples] == ["a"] and len(examples[0].boxes) == 2
    assert report.skipped and "b.jpg" in report.skipped[0][0]
    assert report.boxes_dropped == {"outside the image": 2, "zero-area": 2, "unknown class": 1, "not a number": 1}
    assert report.boxes_read == 2 and report.boxes_clipped == 1


def _coco(root: Path) -> Path:
    _image(root / "images" / "a.jpg")
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
           "categories": [{"id": 1, "name": "car"}],
           "annotations": [
               {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20]},
               {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 20]},    # no width
               {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, -5]},   # negative height
               {"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 80], "iscrowd": 1},
               {"id": 5, "image_id": 1, "category_id": 9, "bbox": [10, 10, 30, 20]},   # no such category
               {"id": 6, "image_id": 42, "category_id": 1, "bbox": [10, 10, 30, 20]},  # no such image
               {"id": 7, "image_id": 1, "category_id": 1, "bbox": [-50, -50, 30, 20]}]}  # wholly outside
    (root / "annotations.json").write_text(json.dumps(doc))
    return root / "annotations.json"


def test_coco_counts_degenerate_crowd_unknown_and_orphan_boxes(tmp_path: Path) -> None:
    report = ReadReport()
    (example,) = read_coco(_coco(tmp_path / "coco"), report=report)
    assert len(example.boxes) == 1 and report.read == 1 and report.skipped == []
    assert report.boxes_dropped == {"zero-area": 2, "crowd region": 1, "unknown class": 1, "no such image": 1,
                                    "outside the image": 1}


def test_cli_prints_dropped_boxes(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "edgeloop", "dataset", "import", "voc", str(_voc(tmp_path / "voc")),
                          "--data-dir", str(tmp_path / "s")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "2 read, 0 skipped; 3 boxes kept, 3 dropped (outside the image: 1, zero-area: 2)" in run.stdout
    assert "dropped a box in a.xml object 2: zero-area: cell xmin 50 ymin 20 xmax 50 ymax 30" in run.stdout


def test_api_import_reports_dropped_boxes(tmp_path: Path) -> None:
    root = tmp_path / "imports"
    _voc(root / "voc")
    config = ServerConfig.model_validate({"mqtt": {"enabled": False}, "store": {"data_dir": str(tmp_path / "data")},
                                          "import_root": str(root)})
    with TestClient(create_app(config, TOKEN)) as client:
        r = client.post("/api/import", json={"format": "voc", "path": "voc"}, headers=BEARER)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["read"] == body["added"] == 2 and body["skipped"] == []
    assert body["boxes_read"] == 3 and body["boxes_clipped"] == 1
    assert body["boxes_dropped"] == {"outside the image": 1, "zero-area": 2}
    assert body["box_notes"][0] == ["a.xml object 2", "zero-area: cell xmin 50 ymin 20 xmax 50 ymax 30"]


@pytest.mark.shared
def test_raccoon_boxes_are_all_kept(shared_data: Path) -> None:
    report = ReadReport()
    read_voc(shared_data / "detection" / "raccoon", report)
    assert report.boxes_read == 217 and report.boxes_dropped == {} and report.boxes_clipped == 0
