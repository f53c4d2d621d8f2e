"""Import a folder of unlabelled images as review items (``pending_review``, source ``import``).

The teacher pre-labels them like edge samples; a reviewer corrects them. Re-importing the same files
adds nothing (the origin is ``images:`` + the path relative to the folder). Every file left out is
in the report with its reason. No threads; waits only on the store's writer.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from trainer.data.common import IMAGE_EXTS, FormatError, ReadReport
from trainer.data.store_io import OUTSIDE_REASON, image_bytes, inside
from trainer.store import BadImage, Store, new_example

CHUNK = 200
MAX_FILES = 100_000


def list_unlabelled(folder: Path, report: ReadReport) -> list[Path]:
    """Image files below ``folder`` (recursive, hidden names left out), in a stable order."""
    if not folder.is_dir():
        raise FormatError(f"{folder} is not a folder")
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):  # a linked folder is not entered
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.suffix.lower() in IMAGE_EXTS:
                out.append(path)
            else:
                report.skip(path, "not an image file name")
            if len(out) > MAX_FILES:
                raise FormatError(f"{folder} holds over {MAX_FILES} images; import it in parts")
    return out


def import_unlabelled(store: Store, folder: str | Path, report: ReadReport | None = None,
                      root: Path | None = None) -> int:
    """Add every image below ``folder`` as an unlabelled review item; returns how many were new.

    With ``root`` (the server's import_root), an image that resolves outside it is skipped, never read.
    """
    folder = Path(folder)
    report = report if report is not None else ReadReport()
    paths = list_unlabelled(folder, report)
    added = 0
    for start in range(0, len(paths), CHUNK):
        rows = []
        for path in paths[start:start + CHUNK]:
            report.read += 1
            if root is not None and not inside(path, root):
                report.skip(path, f"{OUTSIDE_REASON}: resolves outside it through a symlink")
                continue
            try:
                rows.append(new_example(image_bytes(path), source="import", status="pending_review",
                                        origin=f"images:{path.relative_to(folder).as_posix()}"))
            except (OSError, BadImage, ValueError, Image.DecompressionBombError) as err:
                report.skip(path, f"corrupt image: {err}")
        added += store.add_examples(rows)
    return added
