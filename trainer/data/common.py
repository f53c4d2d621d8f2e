"""Shared pieces of the dataset formats: image checks, the skip report, safe names."""

from __future__ import annotations

import logging
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


@dataclass
class ReadReport:
    """What a reader skipped and why; nothing is dropped without a line here."""

    read: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def skip(self, path: object, reason: str) -> None:
        log.warning("skipping %s: %s", path, reason)
        self.skipped.append((str(path), reason))

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for _p, r in self.skipped:
            key = r.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
        return f"{self.read} read, {len(self.skipped)} skipped" + (f" ({detail})" if detail else "")


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
