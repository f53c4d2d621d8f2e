"""Pascal VOC XML (detection).

Layouts read: ``Annotations/`` + ``JPEGImages/`` (+ ``ImageSets/Main/<split>.txt``),
``annotations/`` + ``images/`` (e.g. the raccoon set), or XML files next to
their images. The ``<path>`` element is ignored (it names the annotator's
disk); images are found by ``<filename>``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable

from trainer.dataset import Example, LabeledBox

from .common import (ZERO_AREA, FormatError, ReadReport, atomic_write_text, check_image, file_name, file_stem,
                     image_size, make_box, place_image)

_PAIRS = (("Annotations", "JPEGImages"), ("annotations", "images"))


def _layout(root: Path) -> tuple[Path, Path]:
    for ann, img in _PAIRS:
        if (root / ann).is_dir() and (root / img).is_dir():
            return root / ann, root / img
    if any(root.glob("*.xml")):
        return root, root
    raise FormatError(f"{root}: no Annotations/+JPEGImages/, annotations/+images/ or *.xml found")


def _splits(root: Path) -> dict[str, str]:
    out = {}
    for split in ("train", "val", "test"):
        f = root / "ImageSets" / "Main" / f"{split}.txt"
        if f.is_file():
            for line in f.read_text().split():
                out[line.strip()] = split
    return out


def _num(node: ET.Element, tag: str) -> float:
    child = node.find(tag)
    if child is None or child.text is None:
        raise ValueError(f"missing <{tag}>")
    return float(child.text)


def _parse(xml_path: Path, images: Path) -> tuple[Path, list[tuple[str, float, float, float, float]], tuple]:
    root = ET.parse(xml_path).getroot()
    name = (root.findtext("filename") or "").strip()
    image = images / Path(name).name if name else None
    if image is None or not image.is_file():
        candidates = [p for p in images.glob(xml_path.stem + ".*") if p.suffix.lower() != ".xml"]
        if not candidates:
            raise ValueError(f"image {name or xml_path.stem!r} not found in {images}")
        image = candidates[0]
    size = root.find("size")
    declared = (int(_num(size, "width")), int(_num(size, "height"))) if size is not None else (0, 0)
    objects = []
    for obj in root.iter("object"):
        label = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not label or box is None:
            raise ValueError("an <object> without <name> or <bndbox>")
        objects.append((label, *(_num(box, t) for t in ("xmin", "ymin", "xmax", "ymax"))))
    return image, objects, declared


def _box(obj: tuple, i: int, xml_path: Path, w: int, h: int, report: ReadReport) -> LabeledBox | None:
    label, x1, y1, x2, y2 = obj
    where = f"{xml_path.name} object {i}"
    if x2 <= x1 or y2 <= y1:  # tested on the file's own numbers: xmax == xmin is an annotator's slip
        report.drop_box(where, ZERO_AREA, f"{label} xmin {x1:g} ymin {y1:g} xmax {x2:g} ymax {y2:g}")
        return None
    # VOC pixel indices are 1-based and inclusive: x in [1, width].
    return make_box(x1 - 1, y1 - 1, x2, y2, w, h, label, where, report)


def read_voc(path: str | Path, report: ReadReport | None = None) -> list[Example]:
    root = Path(path)
    report = report if report is not None else ReadReport()
    ann_dir, img_dir = _layout(root)
    splits = _splits(root)
    out = []
    for xml_path in sorted(ann_dir.glob("*.xml")):
        try:
            image, objects, declared = _parse(xml_path, img_dir)
            info = check_image(image)
        except (ValueError, ET.ParseError) as e:
            report.skip(xml_path, str(e))
            continue
        if declared not in ((0, 0), (info.width, info.height)):
            report.skip(xml_path, f"size mismatch: xml says {declared}, image is {(info.width, info.height)}")
            continue
        w, h = info.width, info.height
        boxes = tuple(b for b in (_box(obj, i, xml_path, w, h, report) for i, obj in enumerate(objects, 1)) if b)
        out.append(Example(id=xml_path.stem, image_path=image, boxes=boxes, split=splits.get(xml_path.stem),
                           source="import", meta={"width": w, "height": h}))
        report.read += 1
    return out


def _xml(e: Example, filename: str, w: int, h: int) -> str:
    objs = "".join(
        f"<object><name>{_esc(b.label)}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{round(b.x1 * w) + 1}</xmin><ymin>{round(b.y1 * h) + 1}</ymin>"
        f"<xmax>{round(b.x2 * w)}</xmax><ymax>{round(b.y2 * h)}</ymax></bndbox></object>" for b in e.boxes)
    return (f"<annotation><folder>JPEGImages</folder><filename>{_esc(filename)}</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>0</segmented>"
            f"{objs}</annotation>\n")


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_voc(examples: Iterable[Example], out: str | Path) -> int:
    out = Path(out)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    n = 0
    for e in examples:
        stem, filename = file_stem(e), file_name(e)
        w, h = image_size(e)
        place_image(e.image_path, out / "JPEGImages" / filename)
        atomic_write_text(out / "Annotations" / f"{stem}.xml", _xml(e, filename, w, h))
        if e.split:
            splits[e.split].append(stem)
        n += 1
    (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split, stems in splits.items():
        if stems:
            atomic_write_text(out / "ImageSets" / "Main" / f"{split}.txt", "\n".join(stems) + "\n")
    return n
