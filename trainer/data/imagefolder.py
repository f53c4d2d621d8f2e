"""ImageFolder (classification): ``root/<class>/<image>`` or ``root/<split>/<class>/<image>``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from trainer.dataset import Example

from .common import SPLIT_ALIASES, FormatError, ReadReport, check_image, file_name, list_images, place_image


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_imagefolder(path: str | Path, report: ReadReport | None = None) -> list[Example]:
    """Every readable image under ``path``; corrupt ones are skipped into ``report``."""
    root = Path(path)
    report = report if report is not None else ReadReport()
    if not root.is_dir():
        raise FormatError(f"{root} is not a directory")
    top = _class_dirs(root)
    if not top:
        raise FormatError(f"{root} has no class folders")
    if all(d.name.lower() in SPLIT_ALIASES for d in top):
        groups = [(SPLIT_ALIASES[d.name.lower()], c) for d in top for c in _class_dirs(d)]
    else:
        groups = [(None, c) for c in top]
    out = []
    for split, class_dir in groups:
        for image in list_images(class_dir):
            try:
                info = check_image(image)
            except ValueError as e:
                report.skip(image, str(e))
                continue
            rel = image.relative_to(root).as_posix()
            out.append(Example(id=rel, image_path=image, label=class_dir.name, split=split, source="import",
                               meta={"width": info.width, "height": info.height}))
            report.read += 1
    return out


def labels_of(examples: Iterable[Example]) -> list[str]:
    return sorted({e.label for e in examples if e.label is not None})


def write_imagefolder(examples: Iterable[Example], out: str | Path) -> int:
    """Write ``out/<split>/<class>/`` (``out/<class>/`` when no example has a split). Returns images written."""
    out = Path(out)
    examples = list(examples)
    with_splits = any(e.split for e in examples)
    n = 0
    for e in examples:
        if e.label is None:
            raise FormatError(f"example {e.id} has no class label; ImageFolder is for classification")
        if "/" in e.label or e.label.startswith("."):
            raise FormatError(f"label {e.label!r} cannot be a folder name")
        base = out / (e.split or "unassigned") if with_splits else out
        place_image(e.image_path, base / e.label / file_name(e))
        n += 1
    return n
