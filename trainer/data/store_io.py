"""Moving datasets between the formats and the store."""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image

from trainer.dataset import Example
from trainer.store import BadImage, Store, new_example
from trainer.store.blobs import sniff_ext
from trainer.store.labels import label_problem

from .common import FormatError, ReadReport
from .coco import read_coco, write_coco
from .imagefolder import read_imagefolder, write_imagefolder
from .voc import read_voc, write_voc
from .yolo import read_yolo, write_yolo

log = logging.getLogger(__name__)
FORMATS = ("imagefolder", "coco", "yolo", "voc")
TASK_OF = {"imagefolder": "classification", "coco": "detection", "yolo": "detection", "voc": "detection"}
CHUNK = 200
OUTSIDE_REASON = "outside import_root"


def read_dataset(fmt: str, path: str | Path, images_dir: str | Path | None = None,
                 report: ReadReport | None = None) -> list[Example]:
    """Read any supported format (``path`` is the COCO JSON file for coco)."""
    if fmt == "imagefolder":
        return read_imagefolder(path, report)
    if fmt == "voc":
        return read_voc(path, report)
    if fmt == "yolo":
        return read_yolo(path, report)
    if fmt == "coco":
        return read_coco(path, images_dir, report)
    raise FormatError(f"unknown format {fmt!r}; one of {FORMATS}")


def image_bytes(path: Path) -> bytes:
    """JPEG and PNG are kept byte for byte; anything else (BMP, WebP, GIF) is stored as an RGB PNG
    (what the store, the trainer and browsers all take)."""
    data = path.read_bytes()
    if sniff_ext(data) is not None:
        return data
    with Image.open(io.BytesIO(data)) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "PNG")
        return buf.getvalue()


def inside(path: str | Path, root: Path) -> bool:
    """Whether ``path``, with every symlink on the way resolved, lies under ``root``."""
    try:
        return Path(path).resolve().is_relative_to(root.resolve())
    except (OSError, ValueError, RuntimeError):  # a link loop, an unusable name: not provably inside
        return False


def links_outside(top: Path, root: Path, limit: int = 100_000) -> list[Path]:
    """Symlinks below ``top`` (files or folders, not entered) that resolve outside ``root``."""
    out, seen = [], 0
    for dirpath, dirnames, filenames in os.walk(top):  # followlinks=False: a linked folder is listed, not walked
        for name in dirnames + filenames:
            seen += 1
            p = Path(dirpath) / name
            if p.is_symlink() and not inside(p, root):
                out.append(p)
        if seen > limit:
            raise FormatError(f"{top} holds over {limit} files and folders")
    return out


def import_examples(store: Store, examples: list[Example], *, fmt: str, task: str,
                    report: ReadReport | None = None, root: Path | None = None) -> int:
    """Add examples to the store in chunks; re-importing the same files adds nothing.

    With ``root``, an image that resolves outside it (through a symlink anywhere on its path) is
    skipped into ``report`` with the reason "outside import_root", never read.
    """
    report = report if report is not None else ReadReport()
    if root is not None:
        kept = []
        for e in examples:
            if inside(e.image_path, root):
                kept.append(e)
            else:
                report.skip(e.image_path, f"{OUTSIDE_REASON}: resolves outside it through a symlink")
        examples = kept
    examples = _possible_labels(examples, report)
    labels = sorted({e.label for e in examples if e.label} | {b.label for e in examples for b in e.boxes})
    added = 0
    for start in range(0, len(examples), CHUNK):
        rows = []
        for e in examples[start:start + CHUNK]:
            try:
                rows.append(new_example(image_bytes(Path(e.image_path)), label=e.label, boxes=e.boxes, split=e.split, source=e.source,
                                        status="labeled", origin=f"{fmt}:{e.id}", round_added=e.round_added))
            except (OSError, BadImage, ValueError, Image.DecompressionBombError) as err:
                report.skip(e.image_path, f"corrupt image: {err}")
        added += store.add_examples(rows, task=task, labels=labels)
    return added


def _possible_labels(examples: list[Example], report: ReadReport) -> list[Example]:
    """Examples whose every label is possible in every format (trainer/store/labels.py); the rest reported."""
    kept = []
    for e in examples:
        names = ([e.label] if e.label else []) + [b.label for b in e.boxes]
        problem = next((f"{p}: {n!r:.80}" for n in names for p in (label_problem(n),) if p), None)
        if problem:
            report.skip(e.image_path, f"invalid label: {problem}")
        else:
            kept.append(e)
    return kept


def _checked(examples: Iterable[Example]) -> Iterator[Example]:
    for e in examples:
        for name in ([e.label] if e.label else []) + [b.label for b in e.boxes]:
            _check_export_label(name)
        yield e


def _check_export_label(name: str) -> None:
    problem = label_problem(name)
    if problem:  # only a store from before the rule can hold one; writing it would break the format
        raise FormatError(f"label {name!r:.80} cannot be exported ({problem}); rename it first")


def export_examples(examples: Iterable[Example], fmt: str, out: str | Path, labels: Iterable[str] = ()) -> int:
    """Write a dataset directory atomically: built beside ``out``, renamed into place when complete.

    Every label name is checked with the one rule of trainer/store/labels.py first.
    """
    labels = list(labels)
    for name in labels:
        _check_export_label(name)
    examples = _checked(examples)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FormatError(f"{out} exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if fmt == "imagefolder":
            n = write_imagefolder(examples, tmp)
        elif fmt == "coco":
            n = write_coco(examples, tmp, labels)
        elif fmt == "yolo":
            n = write_yolo(examples, tmp, labels)
        elif fmt == "voc":
            n = write_voc(examples, tmp)
        else:
            raise FormatError(f"unknown format {fmt!r}; one of {FORMATS}")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n


def export_store(store: Store, fmt: str, out: str | Path, split: str | None = None) -> int:
    """Export the store's labelled examples."""
    return export_examples(store.iter_examples(split=split), fmt, out, store.project().labels)
