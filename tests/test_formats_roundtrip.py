"""Every format written and read back on small generated data; the shared datasets imported."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from trainer.data import (FormatError, ReadReport, read_coco, read_imagefolder, read_voc, read_yolo, write_coco,
                          write_imagefolder, write_voc, write_yolo)
from trainer.data.store_io import export_store, import_examples, read_dataset
from trainer.dataset import Example, LabeledBox
from trainer.store import Store


def _image(path: Path, w: int, h: int, seed: int, fmt: str = ".jpg") -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path.with_suffix(fmt)), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path.with_suffix(fmt)


def _detection_examples(tmp: Path) -> list[Example]:
    out = []
    for i in range(6):
        w, h = 80 + 10 * i, 60 + 5 * i
        boxes = (LabeledBox(0.1, 0.2, 0.5, 0.6, "car"), LabeledBox(0.55, 0.1, 0.95, 0.9, "person"))[: i % 3]
        out.append(Example(id=f"img{i}", image_path=_image(tmp / "src" / f"img{i}", w, h, i),
                           boxes=boxes, split=("train", "val", None)[i % 3], meta={"width": w, "height": h}))
    return out


def _same_boxes(a: Example, b: Example, w: int, h: int) -> None:
    assert len(a.boxes) == len(b.boxes)
    for x, y in zip(sorted(a.boxes, key=lambda b: b.x1), sorted(b.boxes, key=lambda b: b.x1)):
        assert x.label == y.label
        # pixel formats round to whole pixels
        assert abs(x.x1 - y.x1) <= 1.01 / w and abs(x.x2 - y.x2) <= 1.01 / w
        assert abs(x.y1 - y.y1) <= 1.01 / h and abs(x.y2 - y.y2) <= 1.01 / h


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc"])
def test_detection_formats_round_trip(tmp_path: Path, fmt: str) -> None:
    examples = _detection_examples(tmp_path)
    out = tmp_path / fmt
    if fmt == "coco":
        assert write_coco(examples, out, labels=["car", "person"]) == 6
        back = read_coco(out / "annotations.json")
    elif fmt == "yolo":
        assert write_yolo(examples, out, labels=["car", "person"]) == 6
        back = read_yolo(out)
    else:
        assert write_voc(examples, out) == 6
        back = read_voc(out)
    by_id = {Path(e.id).name: e for e in back}
    assert len(by_id) == 6
    for e in examples:
        got = by_id[e.id]
        assert got.split == e.split
        assert got.image_path.read_bytes() == e.image_path.read_bytes()
        _same_boxes(e, got, e.meta["width"], e.meta["height"])


def test_imagefolder_round_trip_with_and_without_splits(tmp_path: Path) -> None:
    examples = [Example(id=f"x{i}", image_path=_image(tmp_path / "src" / f"x{i}", 32, 32, i, ".png"),
                        label=("ant", "bee")[i % 2], split=("train", "val", "test", None)[i % 4]) for i in range(8)]
    assert write_imagefolder(examples, tmp_path / "split") == 8
    back = {e.image_path.stem: e for e in read_imagefolder(tmp_path / "split")}
    assert {(k, e.label, e.split) for k, e in back.items()} == {(e.id, e.label, e.split) for e in examples}
    flat = [Example(id=e.id, image_path=e.image_path, label=e.label) for e in examples]
    write_imagefolder(flat, tmp_path / "flat")
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == ["ant", "bee"]
    assert {e.label for e in read_imagefolder(tmp_path / "flat")} == {"ant", "bee"}
    with pytest.raises(FormatError):
        write_imagefolder([Example(id="b", image_path=examples[0].image_path, boxes=())], tmp_path / "nolabel")


def test_corrupt_and_odd_images_are_reported_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _image(root / "ant" / "good", 40, 30, 1)
    (root / "ant" / "truncated.jpg").write_bytes(_image(tmp_path / "t", 64, 64, 2).read_bytes()[:300])
    (root / "bee").mkdir(parents=True)
    (root / "bee" / "text.jpg").write_text("not an image")
    Image.new("P", (20, 20), 3).save(root / "bee" / "palette.gif")
    report = ReadReport()
    examples = read_imagefolder(root, report)
    assert sorted(e.image_path.name for e in examples) == ["good.jpg", "palette.gif"]
    assert report.read == 2 and len(report.skipped) == 2 and "2 skipped" in report.summary()
    with Store(tmp_path / "store") as store:
        assert import_examples(store, examples, fmt="imagefolder", task="classification") == 2
        media = {store.image(int(e.id))[1] for e in store.examples()}
        assert all(e.image_path.is_file() for e in store.examples())
        assert media == {"image/jpeg", "image/png"}  # the GIF became a PNG


def test_store_export_then_reimport(tmp_path: Path) -> None:
    examples = _detection_examples(tmp_path)
    with Store(tmp_path / "a") as a:
        assert import_examples(a, examples, fmt="voc", task="detection") == 6
        assert export_store(a, "coco", tmp_path / "out") == 6
        with pytest.raises(FormatError):
            export_store(a, "coco", tmp_path / "out")  # never into a non-empty folder
    with Store(tmp_path / "b") as b:
        back = read_dataset("coco", tmp_path / "out" / "annotations.json")
        assert import_examples(b, back, fmt="coco", task="detection") == 6
        counts = b.stats()["counts"]
        assert counts["car"]["val"] == 2 and counts["person"]["unassigned"] == 2
        assert b.project().labels == ("car", "person")


@pytest.mark.shared
def test_import_shared_raccoon_and_hymenoptera(shared_data: Path, tmp_path: Path) -> None:
    report = ReadReport()
    raccoon = read_voc(shared_data / "detection" / "raccoon", report)
    assert len(raccoon) == 200 and not report.skipped
    assert all(e.boxes and all(b.label == "raccoon" and 0 <= b.x1 < b.x2 <= 1 for b in e.boxes) for e in raccoon)
    first = next(e for e in raccoon if e.id == "raccoon-1")
    assert first.boxes[0].x1 == pytest.approx(80 / 650)
    report = ReadReport()
    bees = read_imagefolder(shared_data / "classification" / "hymenoptera", report)
    assert {e.split for e in bees} == {"train", "val"} and {e.label for e in bees} == {"ants", "bees"}
    assert len(bees) == 398 and not report.skipped
    with Store(tmp_path / "s") as store:
        assert import_examples(store, raccoon[:40], fmt="voc", task="detection") == 40
        assert store.stats()["counts"]["raccoon"]["unassigned"] >= 40


def test_yolo_reads_data_yaml_names(tmp_path: Path) -> None:
    examples = [Example(id="a", image_path=_image(tmp_path / "src" / "a", 40, 40, 1),
                        boxes=(LabeledBox(0.1, 0.1, 0.5, 0.5, 'odd "name": x'),))]
    write_yolo(examples, tmp_path / "y")
    (tmp_path / "y" / "classes.txt").unlink()  # data.yaml alone must be enough
    assert read_yolo(tmp_path / "y")[0].boxes[0].label == 'odd "name": x'


def test_dataset_cli_import_export(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "ds"
    for label in ("ant", "bee"):
        _image(root / label / "a", 30, 30, hash(label) % 100)
    (root / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + bytes(50))
    cwd = Path(__file__).resolve().parents[1]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgeloop", "dataset", *args, "--data-dir", str(tmp_path / "s")],
                              cwd=cwd, capture_output=True, text=True, timeout=120)
    run = cli("import", "imagefolder", str(root))
    assert run.returncode == 0 and "2 read, 1 skipped" in run.stdout and "2 new examples" in run.stdout
    run = cli("export", "voc", str(tmp_path / "out"))
    assert run.returncode == 0 and "exported 2" in run.stdout
    assert len(list((tmp_path / "out" / "Annotations").iterdir())) == 2
