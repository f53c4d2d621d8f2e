"""COCO JSON (detection): ``images``, ``annotations`` (bbox = [x, y, w, h] in pixels), ``categories``.

Crowd regions (``iscrowd``), boxes without area or outside their image,
boxes of an unknown category and annotations of an image the file does not
list are dropped, each counted under its reason in the ``ReadReport``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from trainer.dataset import SPLITS, Example

from .common import (CROWD, NO_IMAGE, UNKNOWN_CLASS, FormatError, ReadReport, atomic_write_text, check_image,
                     file_name, image_size, make_box, place_image)

SPLIT_KEY = "edgeloop_split"  # an extra image field; other tools ignore it


def read_coco(json_path: str | Path, images_dir: str | Path | None = None,
              report: ReadReport | None = None) -> list[Example]:
    """Examples from a COCO file; ``images_dir`` defaults to ``images/`` next to it, else its folder."""
    json_path = Path(json_path)
    report = report if report is not None else ReadReport()
    try:
        doc = json.loads(json_path.read_text())
        cats = {int(c["id"]): c["name"] for c in doc["categories"]}
        if not all(isinstance(name, str) for name in cats.values()):
            raise TypeError("every category name must be a string")
        images = doc["images"]
        anns = doc.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{json_path}: not a COCO detection file: {e}") from e
    if images_dir is None:
        images_dir = json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent
    images_dir = Path(images_dir)
    by_image: dict[int, list[dict]] = {}
    for a in anns:
        by_image.setdefault(_key(a.get("image_id") if isinstance(a, dict) else None), []).append(a)
    listed = {_key(img.get("id")) for img in images if isinstance(img, dict)}
    for image_id, orphans in by_image.items():
        if image_id not in listed:
            for a in orphans:
                report.drop_box(f"{json_path.name} annotation {_ann_id(a)}", NO_IMAGE, f"image_id {image_id!r}")
    out = []
    for img in images:
        where = f"{json_path}#{img.get('file_name', img.get('id')) if isinstance(img, dict) else img!r}"
        try:
            out.append(_example(img, by_image.get(_key(img.get("id")), []), cats, images_dir, json_path.name, report))
            report.read += 1
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            report.skip(where, str(e))
    return out


def _key(v: object) -> int | str | None:
    """An id usable as a dict key; anything else (a list, a dict) matches nothing."""
    return v if isinstance(v, (int, str)) and not isinstance(v, bool) else None


def _ann_id(a: object) -> object:
    return a.get("id", "?") if isinstance(a, dict) else "?"


def _example(img: dict, anns: list[dict], cats: dict[int, str], images_dir: Path, doc: str,
             report: ReadReport) -> Example:
    path = images_dir / Path(str(img["file_name"])).name
    if not path.is_file():
        raise ValueError(f"image not found: {path}")
    info = check_image(path)
    w, h = info.width, info.height
    parsed = [_parse_ann(a) for a in anns]  # a malformed annotation fails the image before anything is counted
    boxes = []
    for a, (x, y, bw, bh, cat, crowd) in zip(anns, parsed):
        where = f"{doc} annotation {_ann_id(a)} ({path.name})"
        if crowd:
            report.drop_box(where, CROWD)
        elif cat not in cats:
            report.drop_box(where, UNKNOWN_CLASS, f"category_id {cat}")
        elif (box := make_box(x, y, x + bw, y + bh, w, h, cats[cat], where, report)) is not None:
            boxes.append(box)
    split = img.get(SPLIT_KEY)
    return Example(id=Path(str(img["file_name"])).stem, image_path=path, boxes=tuple(boxes),
                   split=split if split in SPLITS else None, source="import", meta={"width": w, "height": h})


def _parse_ann(a: dict) -> tuple[float, float, float, float, int, bool]:
    x, y, bw, bh = (float(v) for v in a["bbox"])
    return x, y, bw, bh, int(a["category_id"]), bool(a.get("iscrowd"))


def write_coco(examples: Iterable[Example], out: str | Path, labels: Iterable[str] = ()) -> int:
    """Write ``out/annotations.json`` and ``out/images/``; category ids follow ``labels`` order (1-based)."""
    out = Path(out)
    examples = list(examples)
    names = list(dict.fromkeys([*labels, *sorted({b.label for e in examples for b in e.boxes})]))
    cat_id = {name: i + 1 for i, name in enumerate(names)}
    images, anns = [], []
    for i, e in enumerate(examples, start=1):
        w, h = image_size(e)
        fname = file_name(e)
        place_image(e.image_path, out / "images" / fname)
        entry = {"id": i, "file_name": fname, "width": w, "height": h}
        if e.split:
            entry[SPLIT_KEY] = e.split
        images.append(entry)
        for b in e.boxes:
            bw, bh = (b.x2 - b.x1) * w, (b.y2 - b.y1) * h
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat_id[b.label],
                         "bbox": [round(b.x1 * w, 2), round(b.y1 * h, 2), round(bw, 2), round(bh, 2)],
                         "area": round(bw * bh, 2), "iscrowd": 0})
    doc = {"info": {"description": "exported by edgeloop"}, "images": images, "annotations": anns,
           "categories": [{"id": cat_id[n], "name": n, "supercategory": "object"} for n in names]}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "annotations.json", json.dumps(doc))
    return len(images)
