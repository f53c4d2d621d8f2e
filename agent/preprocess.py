"""BGR camera frame -> the input tensor a model card describes, and the geometry to map boxes back.

One Preprocessor per loaded model; it owns the input buffer and overwrites it
on every call, so it serves one thread at a time (the inference thread). Pure
OpenCV/numpy work, it waits on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from protocol.modelcard import InputSpec


@dataclass(frozen=True)
class Geometry:
    """How a frame was placed on the model input: input pixel = frame pixel * scale + pad.

    For ``stretch`` the two axes scale independently (scale_x, scale_y).
    """

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """x1, y1, x2, y2 in model-input pixels -> the same in frame pixels."""
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float32)
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], np.float32)
        return (boxes - pad) / scale


def input_shape(spec: InputSpec) -> list[int]:
    c = spec.channels
    return [1, c, spec.height, spec.width] if spec.layout == "NCHW" else [1, spec.height, spec.width, c]


def place(image: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, Geometry]:
    """Resize (stretch, or letterbox at the card's placement and pad value) to the input size, still BGR."""
    h, w = image.shape[:2]
    if spec.resize != "letterbox":
        out = cv2.resize(image, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
        return out, Geometry(spec.width / w, spec.height / h, 0.0, 0.0)
    scale = min(spec.width / w, spec.height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if spec.letterbox == "center":
        px, py = (spec.width - nw) // 2, (spec.height - nh) // 2
    else:
        px, py = 0, 0
    canvas = np.full((spec.height, spec.width, 3), spec.pad_value, np.uint8)
    canvas[py:py + nh, px:px + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    # the real per-axis scale of the rounded size, so boxes map back exactly
    return canvas, Geometry(nw / w, nh / h, float(px), float(py))


class Preprocessor:
    """Writes frames into one reused input buffer in the card's layout, colour order and dtype."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.shape = input_shape(spec)
        self.dtype = np.float32 if spec.dtype == "float32" else np.uint8
        std = np.array(spec.per_channel("std"), np.float32)
        # (x * scale - mean) / std == x * gain - offset: two in-place passes, no temporaries
        self._gain = (spec.scale / std).astype(np.float32)
        self._offset = (np.array(spec.per_channel("mean"), np.float32) / std).astype(np.float32)
        self._out = np.empty(self.shape, self.dtype)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """BGR frame -> input tensor (the shared buffer: run it before the next call) and its geometry."""
        spec = self.spec
        if image.ndim == 2:  # a grey camera: three equal planes serve every colour order
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        resized, geo = place(image, spec)
        out = self._out[0]
        if spec.color == "GRAY":
            grey = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)
            out[...] = grey[None] if spec.layout == "NCHW" else grey[..., None]
        elif spec.layout == "NCHW":
            # planes copied straight into the input buffer, colour order chosen by index
            planes = cv2.split(resized)
            for ch, src in enumerate((2, 1, 0) if spec.color == "RGB" else (0, 1, 2)):
                out[ch] = planes[src]
        else:
            out[...] = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB) if spec.color == "RGB" else resized
        if self.dtype == np.float32:
            shape = (-1, 1, 1) if spec.layout == "NCHW" else (1, 1, -1)
            out *= self._gain.reshape(shape)
            out -= self._offset.reshape(shape)
        return self._out, geo
