"""Shared pieces of the dataset formats: image checks, the skip report, box checks, safe names.

Nothing a reader leaves out goes unreported: a whole image it cannot use is
``skipped`` with its reason, a single box it cannot use is counted in
``boxes_dropped`` under its reason (and listed in ``box_notes``), and a box
partly outside the image is clipped to it and counted in ``boxes_clipped``.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from protocol.files import atomic_write_text as _atomic_write_text

log = logging.getLogger(__name__)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test", "unassigned": None}
MAX_PIXELS = 100_000_000  # a decompression bomb is refused, not decoded


class FormatError(ValueError):
    """A dataset that cannot be read at all (missing files, wrong layout)."""


# Why a box is dropped on import; the same words are counted in ReadReport.boxes_dropped.
ZERO_AREA = "zero-area"
OUTSIDE = "outside the image"
NOT_A_NUMBER = "not a number"
CROWD = "crowd region"
UNKNOWN_CLASS = "unknown class"
NO_IMAGE = "no such image"
NOTES_KEPT = 1000  # box_notes keeps this many (where, reason) lines; the counts are complete


@dataclass
class ReadReport:
    """What a reader skipped, dropped or changed, and why; nothing is dropped without a line here."""

    read: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): whole images
    boxes_read: int = 0  # boxes kept
    boxes_dropped: dict[str, int] = field(default_factory=dict)  # reason -> boxes
    boxes_clipped: int = 0  # kept, clipped to the image
    box_notes: list[tuple[str, str]] = field(default_factory=list)  # (where, reason), the first NOTES_KEPT

    def skip(self, path: object, reason: str) -> None:
        log.warning("skipping %s: %s", path, reason)
        self.skipped.append((str(path), reason))

    def drop_box(self, where: object, reason: str, detail: str = "") -> None:
        log.warning("dropping a box in %s: %s%s", where, reason, f" ({detail})" if detail else "")
        self.boxes_dropped[reason] = self.boxes_dropped.get(reason, 0) + 1
        if len(self.box_notes) < NOTES_KEPT:
            self.box_notes.append((str(where), f"{reason}: {detail}" if detail else reason))

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for _p, r in self.skipped:
            key = r.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
        out = f"{self.read} read, {len(self.skipped)} skipped" + (f" ({detail})" if detail else "")
        if self.boxes_read or self.boxes_dropped or self.boxes_clipped:
            dropped = sum(self.boxes_dropped.values())
            why = ", ".join(f"{k}: {v}" for k, v in sorted(self.boxes_dropped.items()))
            out += f"; {self.boxes_read} boxes kept, {dropped} dropped" + (f" ({why})" if why else "")
            out += f", {self.boxes_clipped} clipped to the image"
        return out

    def to_dict(self) -> dict:
        return {"read": self.read, "skipped": [list(s) for s in self.skipped], "boxes_read": self.boxes_read,
                "boxes_dropped": dict(sorted(self.boxes_dropped.items())), "boxes_clipped": self.boxes_clipped,
                "box_notes": [list(n) for n in self.box_notes]}


def make_box(x1: float, y1: float, x2: float, y2: float, width: float, height: float, label: str,
             where: object, report: ReadReport):
    """A LabeledBox from corners in a frame of ``width`` x ``height`` (pixels, or 1 x 1 when normalized).

    Returns None, counted in ``report`` with its reason, for a box that is not
    a number, has no area or lies wholly outside the image; a box partly
    outside is clipped to the image and counted as clipped.
    """
    from trainer.dataset import LabeledBox

    corners = (x1, y1, x2, y2)
    if not all(math.isfinite(v) for v in corners):
        report.drop_box(where, NOT_A_NUMBER, f"{label} {corners}")
        return None
    if x2 <= x1 or y2 <= y1:
        report.drop_box(where, ZERO_AREA, f"{label} {_fmt(corners)}")
        return None
    n = (x1 / width, y1 / height, x2 / width, y2 / height)
    c = tuple(clamp01(v) for v in n)
    if c[2] <= c[0] or c[3] <= c[1]:
        report.drop_box(where, OUTSIDE, f"{label} {_fmt(corners)} in a {width:g}x{height:g} image")
        return None
    if c != n:
        report.boxes_clipped += 1
    report.boxes_read += 1
    return LabeledBox(*c, label)


def _fmt(corners: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in corners) + ")"


@dataclass(frozen=True)
class ImageCheck:
    width: int
    height: int
    format: str  # PIL's name: JPEG, PNG, ...


def check_image(path: Path) -> ImageCheck:
    """Fully decode ``path`` (truncated files fail here, not in training); raise ValueError if bad."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"too large: {im.width}x{im.height}")
            im.load()
            return ImageCheck(im.width, im.height, im.format or "")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as e:
        raise ValueError(f"corrupt image: {type(e).__name__}: {e}") from e


def list_images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not p.name.startswith("."))


def safe_name(example_id: str) -> str:
    """A file stem from an example id: no separators, no dot-files."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", example_id.replace("/", "__"))
    return stem.lstrip(".") or "example"


def clamp01(v: float) -> float:
    return min(max(v, 0.0), 1.0)


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_text(path, text)


def place_image(src: Path, dst: Path) -> None:
    """Copy (not link: an edited export must never change a content-addressed blob)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def file_stem(e) -> str:
    """The exported file's stem for an Example (its id without a repeated extension)."""
    name = safe_name(str(e.id))
    suffix = Path(e.image_path).suffix.lower()
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def file_name(e) -> str:
    return file_stem(e) + (Path(e.image_path).suffix.lower() or ".jpg")


def image_size(e) -> tuple[int, int]:
    if e.meta.get("width") and e.meta.get("height"):
        return int(e.meta["width"]), int(e.meta["height"])
    info = check_image(Path(e.image_path))
    return info.width, info.height
