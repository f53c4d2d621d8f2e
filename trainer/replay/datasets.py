"""Where replay's labelled examples come from: a dataset folder, digits or a generator.

A folder is read by the same readers ``edgeloop dataset import`` uses
(``trainer.data``). ``digits`` is scikit-learn's bundled 8x8 digits written
once as an ImageFolder of PNGs into a cache folder; ``synthetic:NAME`` renders
a generator's images (``trainer.synthetic``) into one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from trainer.dataset import Example

log = logging.getLogger(__name__)
FORMATS = ("auto", "imagefolder", "voc", "coco", "yolo")
DIGITS = "digits"
SYNTHETIC_PREFIX = "synthetic:"
DIGITS_SIZE = 32  # 8x8 upscaled 4x: big enough for the small CNN's four poolings


class DatasetError(ValueError):
    """The dataset cannot be used for replay; the message says why."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeloop" / "replay"


def load_examples(dataset: str, fmt: str, cache_dir: Path, synthetic_count: int = 600,
                  synthetic_task: str = "classification", seed: int = 0) -> list[Example]:
    """Every labelled example of ``dataset``, with any split the source had cleared.

    Replay holds out its own test split: a dataset's own train/val folders say
    nothing about which images an active learner would have seen.
    """
    if dataset == DIGITS:
        examples = _read_folder(write_digits(cache_dir), "imagefolder")
    elif dataset.startswith(SYNTHETIC_PREFIX):
        examples = generate(dataset[len(SYNTHETIC_PREFIX):], synthetic_count, synthetic_task, cache_dir, seed)
    else:
        path = Path(dataset)
        if not path.exists():
            raise DatasetError(f"dataset {dataset!r}: no such folder (or use 'digits' or 'synthetic:shapes')")
        examples = _read_folder(path, fmt)
    usable = [replace(e, split=None, round_added=0) for e in examples if e.label is not None or e.boxes]
    if len(usable) < len(examples):
        log.warning("%d example(s) without a label or box left out of the replay", len(examples) - len(usable))
    if not usable:
        raise DatasetError(f"dataset {dataset!r} has no labelled examples")
    return sorted(usable, key=lambda e: e.id)


def sniff_format(path: Path) -> str:
    """Which reader fits a folder's layout (each reader still checks the details)."""
    if path.is_file() and path.suffix == ".json":
        return "coco"
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return "yolo"
    for ann in ("Annotations", "annotations", "."):
        if (path / ann).is_dir() and any((path / ann).glob("*.xml")):
            return "voc"
    if _coco_json(path) is not None:
        return "coco"
    return "imagefolder"


def _coco_json(path: Path) -> Path | None:
    found = sorted(path.glob("*.json")) + sorted(path.glob("annotations/*.json"))
    return found[0] if len(found) == 1 else None


def _read_folder(path: Path, fmt: str) -> list[Example]:
    from trainer.data import FormatError, ReadReport, read_coco, read_imagefolder, read_voc, read_yolo

    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = sniff_format(path)
        log.info("%s looks like %s", path, fmt)
    report = ReadReport()
    try:
        if fmt == "coco":
            json_path = path if path.is_file() else _coco_json(path)
            if json_path is None:
                raise DatasetError(f"{path}: give the COCO JSON file itself (no single *.json found in the folder)")
            examples = read_coco(json_path, report=report)
        else:
            readers = {"imagefolder": read_imagefolder, "voc": read_voc, "yolo": read_yolo}
            examples = readers[fmt](path, report)
    except FormatError as e:
        raise DatasetError(f"{path} as {fmt}: {e}") from e
    if report.skipped:
        log.warning("%s: %s", path, report.summary())
    return examples


def write_digits(cache_dir: Path, size: int = DIGITS_SIZE) -> Path:
    """scikit-learn's digits as ``<cache>/digits-<size>px/<digit>/*.png``, written once, atomically."""
    target = Path(cache_dir) / f"digits-{size}px"
    if (target / ".complete").exists():
        return target
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DatasetError("--dataset digits needs scikit-learn: pip install scikit-learn") from e
    from PIL import Image

    digits = load_digits()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=target.parent))
    try:
        for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
            folder = tmp / str(int(label))
            folder.mkdir(exist_ok=True)
            gray = np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8)
            Image.fromarray(gray, "L").resize((size, size), Image.BILINEAR).save(folder / f"digit-{i:04d}.png")
        (tmp / ".complete").write_text(f"{len(digits.images)} images from sklearn.datasets.load_digits\n")
        if target.exists():  # a half-written folder from a crash: nothing in it is trusted
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d digits to %s", len(digits.images), target)
    return target


def generate(name: str, count: int, task: str, cache_dir: Path, seed: int) -> list[Example]:
    """``count`` images from generator ``name``, a third each at drift 0, 0.5 and 1.

    The spread of drift gives the pool easy and hard examples, which is what
    uncertainty sampling has to tell apart.
    """
    from trainer.synthetic import get_generator

    if count < 30:
        raise DatasetError(f"--synthetic-count {count} is too small; use at least 30")
    out = Path(cache_dir) / f"{name.replace(':', '_')}-{task}-{count}-seed{seed}"
    if out.exists():
        shutil.rmtree(out)  # regenerate: the generator is seeded, so the result is the same
    rng = np.random.default_rng(seed)
    examples: list[Example] = []
    drifts = (0.0, 0.5, 1.0)
    for i, drift in enumerate(drifts):
        n = count // len(drifts) + (1 if i < count % len(drifts) else 0)
        try:
            gen = get_generator(name, task=task, drift=drift)
        except (KeyError, TypeError) as e:
            raise DatasetError(str(e).strip("'\"")) from e
        examples += gen.generate(n, rng, out / f"drift{drift:.1f}")
    return examples
