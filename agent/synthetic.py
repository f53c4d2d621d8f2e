"""A synthetic camera: coloured shapes on varied backgrounds, deterministic from a seed.

Used by demos and tests instead of a physical camera. Scenes hold for a few
frames (with sensor noise), as a real camera's view does, so near-duplicate
suppression has something to suppress. ``drift`` moves the style (background
palette, shape colours, noise, blur) away from what frame 0 looked like, which
is how a model trained on early frames starts to be unsure.

Only numpy and OpenCV drawing: no GUI, no camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Shape:
    kind: str
    cx: float  # centre and size as fractions of the image
    cy: float
    size: float

    def box(self) -> tuple[float, float, float, float]:
        h = self.size / 2
        return (max(0.0, self.cx - h), max(0.0, self.cy - h), min(1.0, self.cx + h), min(1.0, self.cy + h))


@dataclass(frozen=True)
class SyntheticFrame:
    image: np.ndarray  # BGR uint8
    shapes: tuple[Shape, ...]
    label: str  # the largest shape's kind: the classification ground truth


def _background(rng: np.random.Generator, w: int, h: int, drift: float) -> np.ndarray:
    base = rng.integers(0, 256, 3).astype(np.float32)
    tint = np.array([40.0, -30.0, 60.0], np.float32) * drift
    other = rng.integers(0, 256, 3).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    img = base * (1 - ramp) + other * ramp + tint
    if rng.random() < 0.5:  # stripes, so backgrounds are not all smooth gradients
        period = int(rng.integers(8, 40))
        stripes = ((np.arange(h)[:, None, None] // period) % 2).astype(np.float32) * 30.0
        img = img + stripes
    return np.clip(img, 0, 255).astype(np.uint8)  # (1 or h, w, 3): the caller broadcasts


def _outline(kind: str, cx: int, cy: int, r: int, variant: bool) -> np.ndarray | None:
    """Polygon points of a square or triangle; the variant is a diamond or a downward triangle."""
    if kind == "square":
        if variant:
            return np.array([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], np.int32)
        return np.array([(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)], np.int32)
    if kind == "triangle":
        if variant:
            return np.array([(cx, cy + r), (cx - r, cy - r), (cx + r, cy - r)], np.int32)
        return np.array([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], np.int32)
    return None


def _draw(img: np.ndarray, shape: Shape, color: tuple[int, int, int], variant: bool = False) -> None:
    """A solid shape; the drifted variant is hollow and turned (a new look of the same class)."""
    h, w = img.shape[:2]
    cx, cy, r = int(shape.cx * w), int(shape.cy * h), max(2, int(shape.size * min(w, h) / 2))
    thickness = max(2, r // 4) if variant else -1
    pts = _outline(shape.kind, cx, cy, r, variant)
    if pts is None:
        axes = (r, max(2, r * 2 // 3)) if variant else (r, r)
        cv2.ellipse(img, (cx, cy), axes, 0, 0, 360, color, thickness, cv2.LINE_AA)
    elif variant:
        cv2.polylines(img, [pts], True, color, thickness, cv2.LINE_AA)
    else:
        cv2.fillPoly(img, [pts], color, cv2.LINE_AA)


def render_scene(rng: np.random.Generator, width: int, height: int, drift: float = 0.0,
                 max_shapes: int = 3) -> tuple[np.ndarray, tuple[Shape, ...]]:
    """One noiseless scene: a background and 1..max_shapes shapes, the first one the largest."""
    img = np.broadcast_to(_background(rng, width, height, drift), (height, width, 3)).copy()
    n = int(rng.integers(1, max_shapes + 1))
    shapes = []
    for i in range(n):
        size = float(rng.uniform(0.35, 0.6)) if i == 0 else float(rng.uniform(0.1, 0.25))
        shapes.append(Shape(SHAPES[int(rng.integers(len(SHAPES)))], float(rng.uniform(0.25, 0.75)),
                            float(rng.uniform(0.25, 0.75)), size))
    # Drift also changes how objects look, not only the light: more and more of
    # them are a new variant (hollow, turned: a new product line, say), which a
    # model that only saw the solid originals has never learned.
    variant = drift > 0 and rng.random() < 0.8 * min(drift, 1.0)
    for s in reversed(shapes):  # the large one last, so it stays visible
        color = rng.integers(0, 256, 3) + np.array([-60, 80, 20]) * drift
        _draw(img, s, tuple(int(c) for c in np.clip(color, 0, 255)), variant)
    if drift > 0:
        k = 1 + 2 * int(min(drift, 1.0) * 3)
        img = cv2.GaussianBlur(img, (k, k), 0)
    return img, tuple(shapes)


class SyntheticCamera:
    """Frame ``i`` is a pure function of (seed, i): scenes change every ``hold`` frames."""

    def __init__(self, seed: int = 0, width: int = 320, height: int = 240, drift_per_frame: float = 0.0,
                 hold: int = 5, noise: float = 3.0, max_shapes: int = 3) -> None:
        self.seed = seed
        self.max_shapes = max_shapes
        self.width = width
        self.height = height
        self.drift_per_frame = drift_per_frame
        self.hold = max(1, hold)
        self.noise = noise
        self._scene: tuple[int, np.ndarray, tuple[Shape, ...]] | None = None

    def frame(self, i: int) -> SyntheticFrame:
        scene_no = i // self.hold
        if self._scene is None or self._scene[0] != scene_no:
            rng = np.random.default_rng([self.seed, scene_no])
            drift = min(1.0, scene_no * self.hold * self.drift_per_frame)
            img, shapes = render_scene(rng, self.width, self.height, drift, self.max_shapes)
            self._scene = (scene_no, img, shapes)
        _, img, shapes = self._scene
        if self.noise > 0:
            rng = np.random.default_rng([self.seed, i, 1])
            noisy = img.astype(np.int16) + rng.normal(0, self.noise, img.shape).astype(np.int16)
            img = np.clip(noisy, 0, 255).astype(np.uint8)
        return SyntheticFrame(img, shapes, shapes[0].kind)
