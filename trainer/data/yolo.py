"""YOLO txt (detection): ``images/[split/]x.jpg`` + ``labels/[split/]x.txt`` with ``class cx cy w h``.

Class names come from ``classes.txt`` (one per line) or the ``names`` of
``data.yaml``. A malformed line skips its image; a box with no area, wholly
outside the image or of an unnamed class is dropped and counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from trainer.dataset import Example, LabeledBox

from .common import (SPLIT_ALIASES, UNKNOWN_CLASS, FormatError, ReadReport, atomic_write_text, check_image,
                     file_name, file_stem, list_images, make_box, place_image)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # a byte-order mark from a Windows editor is fine
    except UnicodeDecodeError as e:
        raise FormatError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e


def _classes_txt(path: Path) -> list[str]:
    lines = [line.strip() for line in _text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()  # trailing blank lines name no class
    for n, line in enumerate(lines, start=1):
        if not line:  # dropping it would shift every later class index
            raise FormatError(f"{path} line {n} is empty: each line names the class of its index")
    return lines


def _yaml_name(root: Path, value: object) -> str:
    if isinstance(value, (dict, list, tuple)) or value is None:
        raise FormatError(f"{root}/data.yaml: every class name must be a plain value, not {value!r:.60}")
    return str(value)


def _names(root: Path) -> list[str]:
    if (root / "classes.txt").is_file():
        return _classes_txt(root / "classes.txt")
    if (root / "data.yaml").is_file():
        import yaml

        try:
            data = yaml.safe_load(_text(root / "data.yaml"))
        except yaml.YAMLError as e:  # includes tags safe_load refuses (!!python/...)
            raise FormatError(f"{root}/data.yaml is not valid YAML: {str(e)[:200]}") from e
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            if not all(isinstance(k, int) for k in names):
                raise FormatError(f"{root}/data.yaml: names must be a list or map class numbers to names")
            return [_yaml_name(root, names[k]) for k in sorted(names)]
        if isinstance(names, list):
            return [_yaml_name(root, n) for n in names]
    raise FormatError(f"{root}: no classes.txt or data.yaml with names")


def _boxes(txt: Path, names: list[str], report: ReadReport) -> tuple[LabeledBox, ...]:
    """The boxes of one label file; a malformed line fails the file, a box that is unusable is dropped and counted."""
    rows = []
    for n, line in enumerate(txt.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"line {n}: expected 'class cx cy w h'")
        try:
            rows.append((n, int(parts[0]), *(float(p) for p in parts[1:])))
        except ValueError as e:
            raise ValueError(f"line {n}: {e}") from e
    boxes = []
    for n, cls, cx, cy, w, h in rows:
        where = f"{txt.name} line {n}"
        if not 0 <= cls < len(names):
            report.drop_box(where, UNKNOWN_CLASS, f"class {cls} has no name ({len(names)} names)")
            continue
        box = make_box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, 1.0, 1.0, names[cls], where, report)
        if box is not None:
            boxes.append(box)
    return tuple(boxes)


def read_yolo(path: str | Path, report: ReadReport | None = None) -> list[Example]:
    root = Path(path)
    report = report if report is not None else ReadReport()
    if not (root / "images").is_dir():
        raise FormatError(f"{root}: no images/ folder")
    names = _names(root)
    subdirs = [d for d in sorted((root / "images").iterdir()) if d.is_dir() and d.name.lower() in SPLIT_ALIASES]
    groups = [(SPLIT_ALIASES[d.name.lower()], d, root / "labels" / d.name) for d in subdirs] or \
        [(None, root / "images", root / "labels")]
    out = []
    for split, img_dir, lbl_dir in groups:
        for image in list_images(img_dir):
            txt = lbl_dir / f"{image.stem}.txt"
            try:
                info = check_image(image)
                boxes = _boxes(txt, names, report) if txt.is_file() else ()  # no file: an image with no objects
            except ValueError as e:
                report.skip(image, str(e))
                continue
            out.append(Example(id=image.relative_to(root / "images").with_suffix("").as_posix(), image_path=image,
                               boxes=boxes, split=split, source="import",
                               meta={"width": info.width, "height": info.height}))
            report.read += 1
    return out


def write_yolo(examples: Iterable[Example], out: str | Path, labels: Iterable[str] = ()) -> int:
    out = Path(out)
    examples = list(examples)
    names = list(dict.fromkeys([*labels, *sorted({b.label for e in examples for b in e.boxes})]))
    index = {n: i for i, n in enumerate(names)}
    with_splits = any(e.split for e in examples)
    for e in examples:
        sub = (e.split or "unassigned") if with_splits else ""
        place_image(e.image_path, out / "images" / sub / file_name(e))
        lines = [f"{index[b.label]} {(b.x1 + b.x2) / 2:.6f} {(b.y1 + b.y2) / 2:.6f} {b.x2 - b.x1:.6f} "
                 f"{b.y2 - b.y1:.6f}" for b in e.boxes]
        (out / "labels" / sub).mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "labels" / sub / f"{file_stem(e)}.txt", "\n".join(lines) + ("\n" if lines else ""))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "classes.txt", "\n".join(names) + "\n")
    splits = sorted({e.split or "unassigned" for e in examples}) if with_splits else []
    yaml = "".join(f"{s}: images/{s}\n" for s in splits if s in ("train", "val", "test")) or "train: images\n"
    atomic_write_text(out / "data.yaml", f"path: .\n{yaml}names:\n" + "".join(f"  {i}: {json.dumps(n)}\n"
                                                                             for i, n in enumerate(names)))
    return len(examples)
