"""The built-in generator: circles, squares and triangles on textured backgrounds.

``drift`` (0..1) moves the rendering away from the training distribution:
darker, colour-cast lighting, a different background texture, hollow and
lower-contrast shapes. A model trained on drift=0 is confident there and
unsure at drift=1, which is what the demo's active-learning loop needs to find.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from trainer.dataset import Example, LabeledBox

CLASSES = ("circle", "square", "triangle")


@dataclass
class ShapesGenerator:
    task: str = "classification"
    drift: float = 0.0
    size: int | None = None  # 64 for classification, 128 for detection
    round_added: int = 0
    max_objects: int = 4
    name: str = "shapes"

    def __post_init__(self) -> None:
        if self.task not in ("classification", "detection"):
            raise ValueError(f"task must be classification or detection, not {self.task!r}")
        if not 0.0 <= self.drift <= 1.0:
            raise ValueError("drift must be within [0, 1]")
        self.size = self.size or (64 if self.task == "classification" else 128)

    def generate(self, n: int, rng: np.random.Generator, out_dir: Path) -> list[Example]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        token = f"{int(rng.integers(0, 2**32)):08x}"
        examples = []
        for i in range(n):
            example_id = f"shapes-{token}-{i:05d}"
            path = out_dir / f"{example_id}.png"
            img = _background(rng, self.size, self.drift)
            draw = ImageDraw.Draw(img)
            meta = {"generator": self.name, "drift": self.drift}
            if self.task == "classification":
                label = CLASSES[int(rng.integers(len(CLASSES)))]
                _shape(draw, rng, label, _placement(rng, self.size, 0.35, 0.7), self.drift)
                img = _finish(img, rng, self.drift)
                img.save(path)
                examples.append(Example(id=example_id, image_path=path, label=label, source="synthetic",
                                        round_added=self.round_added, meta=meta))
            else:
                boxes = self._draw_objects(draw, rng)
                img = _finish(img, rng, self.drift)
                img.save(path)
                examples.append(Example(id=example_id, image_path=path, boxes=tuple(boxes), source="synthetic",
                                        round_added=self.round_added, meta=meta))
        return examples

    def _draw_objects(self, draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> list[LabeledBox]:
        boxes: list[LabeledBox] = []
        placed: list[tuple[float, float, float, float]] = []
        for _ in range(int(rng.integers(1, self.max_objects + 1))):
            for _attempt in range(10):
                box = _placement(rng, self.size, 0.14, 0.38)
                if all(_overlap(box, other) < 0.05 for other in placed):
                    break
            else:
                continue
            label = CLASSES[int(rng.integers(len(CLASSES)))]
            _shape(draw, rng, label, box, self.drift)
            placed.append(box)
            s = float(self.size)
            boxes.append(LabeledBox(box[0] / s, box[1] / s, box[2] / s, box[3] / s, label))
        return boxes


def _placement(rng: np.random.Generator, size: int, lo: float, hi: float) -> tuple[float, float, float, float]:
    side = float(rng.uniform(lo, hi)) * size
    x1 = float(rng.uniform(0, size - side))
    y1 = float(rng.uniform(0, size - side))
    return (x1, y1, x1 + side, y1 + side)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _background(rng: np.random.Generator, size: int, drift: float) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    gradient = np.cos(angle) * xx + np.sin(angle) * yy
    base = rng.uniform(150, 230, size=3) * (1 - 0.65 * drift)  # drift darkens the scene
    cast = np.array([1.0, 1.0 - 0.3 * drift, 1.0 - 0.6 * drift])  # and turns it warm
    img = base[None, None, :] * (0.8 + 0.3 * gradient[..., None])
    if rng.uniform() < drift:  # a new texture appears with drift: diagonal stripes
        freq = rng.uniform(6, 14)
        img = img * (0.8 + 0.2 * np.sign(np.sin((xx + yy) * freq * np.pi)))[..., None]
    img = img * cast + rng.normal(0, 6 + 10 * drift, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, label: str,
           box: tuple[float, float, float, float], drift: float) -> None:
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    if drift > 0:  # lower contrast: pull the colour towards a dull grey
        colour = tuple(int(c * (1 - 0.6 * drift) + 90 * 0.6 * drift) for c in colour)
    hollow = rng.uniform() < drift
    fill, outline, width = (None, colour, max(2, int((box[2] - box[0]) / 8))) if hollow else (colour, (20, 20, 20), 1)
    x1, y1, x2, y2 = box
    if label == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif label == "square":
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill, outline=outline, width=width)


def _finish(img: Image.Image, rng: np.random.Generator, drift: float) -> Image.Image:
    radius = float(rng.uniform(0, 0.6 + 1.2 * drift))
    return img.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.3 else img
