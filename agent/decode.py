"""Pure numpy decoders: raw model outputs -> boxes, scores and labels the agent can sample and send.

One function per output type of the model card (protocol.modelcard), plus
NMS and the mapping from model-input pixels back to the frame. No state, no
threads, nothing waited on; a tensor that does not have the shape the card
promises raises ``OutputShapeError`` naming the tensor, its shape and what
the card implies (the runner turns that into a load error at warm-up).

YOLO family, as shipped (field names as in YOLOX's and Ultralytics' exports):

* ``yolo``: decoded boxes, one row per candidate: ``[1, N, 4+1+C]`` (v5/v7:
  box, objectness, classes) or transposed ``[1, 4+C, N]`` (v8/v11, no
  objectness).
* ``yolox``: raw anchor-free grid cells, stride by stride, each grid in
  row-major order: ``cx = (gx + dx)·s``, ``cy = (gy + dy)·s``,
  ``w = exp(dw)·s``, ``h = exp(dh)·s`` in input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol.modelcard import BoxesScoresLabelsOutput, SSDOutput, YoloOutput, YoloxOutput

from .preprocess import Geometry

EMPTY_BOXES = np.zeros((0, 4), np.float32)
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [N, 4], scores [N], labels [N]
NO_DETECTIONS: Detections = (EMPTY_BOXES, np.zeros(0, np.float32), np.zeros(0, np.int64))
EXP_CAP = 16.0  # exp(16)·stride is far beyond any frame: a wild dw/dh gives a huge box, not inf


class OutputShapeError(ValueError):
    """An output tensor does not have the shape the card implies."""


def nonfinite_outputs(outputs: list[np.ndarray], names: list[str]) -> str:
    """"" when every float output is finite, else which outputs hold how many NaN/inf values."""
    bad = []
    for name, out in zip(names, outputs):
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            n_nan = int(np.isnan(out).sum())
            bad.append(f"{name} has {n_nan} NaN and {int(out.size - np.isfinite(out).sum()) - n_nan} inf "
                       f"of {out.size} values")
    return "; ".join(bad)


def classify(raw: np.ndarray, activation: str) -> np.ndarray:
    x = raw.reshape(-1).astype(np.float64)
    if activation == "softmax":
        e = np.exp(x - x.max())
        x = e / e.sum()
    elif activation == "sigmoid":
        x = 1.0 / (1.0 + np.exp(-x))
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def embedding_vector(raw: np.ndarray) -> np.ndarray:
    """A pooled feature output ([1, D] or [1, D, 1, 1]) -> L2-normalized float32 [D]."""
    v = raw.reshape(-1).astype(np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.array(keep, np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
                class_agnostic: bool = False) -> np.ndarray:
    """Per-class NMS in one pass: each class's boxes are shifted apart so they never overlap another's."""
    if boxes.size == 0 or class_agnostic:
        return nms(boxes, scores, iou_threshold) if boxes.size else np.zeros(0, np.int64)
    span = float(boxes.max() - boxes.min()) + 1.0
    return nms(boxes + (labels.astype(np.float32) * span)[:, None], scores, iou_threshold)


def to_xyxy(boxes: np.ndarray, fmt: str) -> np.ndarray:
    b = boxes.astype(np.float32)
    if fmt == "xywh":
        return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)
    if fmt == "cxcywh":
        hw, hh = b[:, 2] / 2, b[:, 3] / 2
        return np.stack([b[:, 0] - hw, b[:, 1] - hh, b[:, 0] + hw, b[:, 1] + hh], axis=1)
    return b


def to_frame_xyxy(boxes: np.ndarray, fmt: str, normalized: bool, in_w: int, in_h: int, frame_w: int,
                  frame_h: int, geo: Geometry) -> np.ndarray:
    """Model-output boxes -> x1, y1, x2, y2 normalized to the original frame, clipped to [0, 1]."""
    b = to_xyxy(boxes, fmt)
    if normalized:
        b = b * np.array([in_w, in_h, in_w, in_h], np.float32)
    b = geo.to_frame(b) / np.array([frame_w, frame_h, frame_w, frame_h], np.float32)
    b = np.clip(b, 0.0, 1.0)
    b[:, 2] = np.maximum(b[:, 2], b[:, 0])
    b[:, 3] = np.maximum(b[:, 3], b[:, 1])
    return b.astype(np.float32)


def to_frame_detections(dets: Detections, fmt: str, normalized: bool, in_w: int, in_h: int, frame_w: int,
                        frame_h: int, geo: Geometry) -> Detections:
    """``to_frame_xyxy`` for a decoder's detections, dropping the boxes left with no area after clipping:
    a box wholly inside the letterbox padding is not a detection at the frame's edge."""
    boxes, scores, labels = dets
    b = to_frame_xyxy(boxes, fmt, normalized, in_w, in_h, frame_w, frame_h, geo)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    return b[keep], scores[keep], labels[keep]


# -- ssd and boxes_scores_labels -----------------------------------------------------------------

def decode_ssd(boxes: np.ndarray, scores: np.ndarray, out: SSDOutput, floor: float) -> Detections:
    """Per class: scores >= floor, NMS; then the best max_detections over all classes."""
    if out.background_class is not None:
        scores = np.delete(scores, out.background_class, axis=1)
    all_b, all_s, all_l = [], [], []
    for c in range(scores.shape[1]):
        idx = np.nonzero(scores[:, c] >= floor)[0]
        if idx.size == 0:
            continue
        keep = idx[nms(to_xyxy(boxes[idx], out.box_format), scores[idx, c], out.iou_threshold)]
        all_b.append(boxes[keep])
        all_s.append(scores[keep, c])
        all_l.append(np.full(keep.size, c, np.int64))
    if not all_b:
        return NO_DETECTIONS
    b, s, lab = np.concatenate(all_b), np.concatenate(all_s), np.concatenate(all_l)
    top = np.argsort(-s, kind="stable")[:out.max_detections]
    return b[top].astype(np.float32), s[top].astype(np.float32), lab[top]


def decode_bsl(outputs: list[np.ndarray], out: BoxesScoresLabelsOutput, floor: float, n_labels: int) -> Detections:
    boxes = outputs[0].reshape(-1, 4).astype(np.float32)
    scores = outputs[1].reshape(-1).astype(np.float32)
    labels = outputs[2].reshape(-1).astype(np.int64) - out.label_offset
    keep = (scores >= floor) & (labels >= 0) & (labels < n_labels)
    return boxes[keep], scores[keep], labels[keep]


# -- YOLO family ---------------------------------------------------------------------------------

def row_width(out: YoloOutput | YoloxOutput, n_labels: int) -> int:
    return 4 + (1 if out.objectness else 0) + n_labels


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def dense_candidates(obj: np.ndarray | None, cls: np.ndarray, out: YoloOutput | YoloxOutput,
                     floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index, score, label) of every candidate at or above ``floor``, best max_candidates first.

    A row's candidates are its best class, or (card ``multi_label``) every class at or above the floor.
    """
    # Rows whose best class reaches the floor, found with one max per row: most cells of a frame are
    # background, and scoring only the rest keeps the decode well under a millisecond.
    best = cls.max(axis=1) * obj if obj is not None else cls.max(axis=1)
    if out.score == "sqrt":
        best = np.sqrt(np.maximum(best, 0.0))
    live = np.nonzero(best >= floor)[0]
    scores = cls[live] * obj[live, None] if obj is not None else cls[live]
    if out.score == "sqrt":
        scores = np.sqrt(np.maximum(scores, 0.0))
    if out.multi_label:
        sub, labels = np.nonzero(scores >= floor)
        s = scores[sub, labels]
    else:
        labels = np.argmax(scores, axis=1)
        s = scores[np.arange(scores.shape[0]), labels]
        sub = np.nonzero(s >= floor)[0]
        labels, s = labels[sub], s[sub]
    top = np.argsort(-s, kind="stable")[:out.max_candidates]
    return live[sub[top]], s[top].astype(np.float32), labels[top].astype(np.int64)


def _finish(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, out: YoloOutput | YoloxOutput) -> Detections:
    keep = batched_nms(boxes, scores, labels, out.iou_threshold, out.class_agnostic)[:out.max_detections]
    return boxes[keep].astype(np.float32), scores[keep], labels[keep]


def yolo_rows(raw: np.ndarray, out: YoloOutput, n_labels: int, name: str) -> np.ndarray:
    """The decoded-YOLO tensor as [N, 4(+1)+C] rows, or OutputShapeError."""
    k = row_width(out, n_labels)
    want = f"[1, {k}, N]" if out.transposed else f"[1, N, {k}]"
    axis = 1 if out.transposed else 2
    if raw.ndim != 3 or raw.shape[0] != 1 or raw.shape[axis] != k:
        parts = f"4 box + {'1 objectness + ' if out.objectness else ''}{n_labels} classes"
        raise OutputShapeError(f"output {name} has shape {list(raw.shape)}; a yolo card with {n_labels} labels "
                               f"{'(transposed) ' if out.transposed else ''}expects {want} ({parts})")
    return raw[0].T if out.transposed else raw[0]


def decode_yolo(raw: np.ndarray, out: YoloOutput, n_labels: int, floor: float, name: str = "output") -> Detections:
    """Decoded YOLO rows -> xyxy boxes (input pixels, or normalized as the card says), scores, labels."""
    rows = yolo_rows(raw, out, n_labels, name)
    obj = rows[:, 4] if out.objectness else None
    cls = rows[:, 5:] if out.objectness else rows[:, 4:]
    idx, scores, labels = dense_candidates(obj, cls, out, floor)
    if idx.size == 0:
        return NO_DETECTIONS
    return _finish(to_xyxy(rows[idx, :4], out.box_format), scores, labels, out)


@dataclass(frozen=True)
class Grid:
    """The cells of every stride, in output order: column, row and stride of each."""

    sizes: tuple[tuple[int, int], ...]  # (rows, columns) per stride
    gx: np.ndarray
    gy: np.ndarray
    stride: np.ndarray

    @property
    def cells(self) -> int:
        return int(self.gx.size)


def make_grid(strides: tuple[int, ...], width: int, height: int) -> Grid:
    sizes, gx, gy, st = [], [], [], []
    for s in strides:
        h, w = height // s, width // s
        yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        sizes.append((h, w))
        gx.append(xx.reshape(-1))
        gy.append(yy.reshape(-1))
        st.append(np.full(h * w, s, np.float32))
    return Grid(tuple(sizes), np.concatenate(gx), np.concatenate(gy), np.concatenate(st))


def _cells(t: np.ndarray, h: int, w: int, k: int, name: str, what: str) -> np.ndarray:
    """One stride's tensor ([1,k,h,w], [1,h,w,k], [1,h*w,k] or [1,k,h*w]) -> [h*w, k] rows."""
    shape = tuple(t.shape)
    if shape == (1, k, h, w):
        return t[0].reshape(k, h * w).T
    if shape == (1, h, w, k):
        return t[0].reshape(h * w, k)
    if shape == (1, h * w, k):
        return t[0]
    if shape == (1, k, h * w):
        return t[0].T
    raise OutputShapeError(f"output {name} has shape {list(shape)}; {what} expects [1, {k}, {h}, {w}] or "
                           f"[1, {h * w}, {k}]")


def yolox_rows(outputs: list[np.ndarray], names: list[str], out: YoloxOutput, grid: Grid,
               n_labels: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Every cell as (box [N,4], objectness [N] or None, classes [N,C]) whatever the tensor layout."""
    k = row_width(out, n_labels)
    strides = ", ".join(map(str, out.strides))
    if out.outputs:  # one tensor per stride (a single stride included)
        rows = np.concatenate([_cells(t, h, w, k, n, f"stride {s}") for t, n, s, (h, w)
                               in zip(outputs, names, out.strides, grid.sizes)])
    elif not out.box_outputs:  # every stride concatenated in one tensor
        raw, total = outputs[0], grid.cells
        cells = " + ".join(f"{h}x{w}" for h, w in grid.sizes)
        if raw.ndim == 3 and raw.shape[0] == 1 and raw.shape[2] == k and raw.shape[1] == total:
            rows = raw[0]
        elif raw.ndim == 3 and raw.shape[0] == 1 and raw.shape[1] == k and raw.shape[2] == total:
            rows = raw[0].T
        else:
            raise OutputShapeError(
                f"output {names[0]} has shape {list(raw.shape)}; strides {strides} give {cells} = {total} rows "
                f"of {k} values (4 box + {'1 objectness + ' if out.objectness else ''}{n_labels} classes): "
                f"expected [1, {total}, {k}]")
    else:
        per = 3 if out.objectness else 2
        box, obj, cls = [], [], []
        for i, (s, (h, w)) in enumerate(zip(out.strides, grid.sizes)):
            group, gnames = outputs[i * per:(i + 1) * per], names[i * per:(i + 1) * per]
            box.append(_cells(group[0], h, w, 4, gnames[0], f"stride {s} boxes"))
            if out.objectness:
                obj.append(_cells(group[1], h, w, 1, gnames[1], f"stride {s} objectness"))
            cls.append(_cells(group[-1], h, w, n_labels, gnames[-1], f"stride {s} classes ({n_labels} labels)"))
        rows = np.concatenate([np.concatenate(box)] + ([np.concatenate(obj)] if obj else []) +
                              [np.concatenate(cls)], axis=1)
    obj_col = rows[:, 4] if out.objectness else None
    cls_cols = rows[:, 5:] if out.objectness else rows[:, 4:]
    if out.sigmoid:
        obj_col = _sigmoid(obj_col) if obj_col is not None else None
        cls_cols = _sigmoid(cls_cols)
    return rows[:, :4], obj_col, cls_cols


def decode_yolox(outputs: list[np.ndarray], names: list[str], out: YoloxOutput, grid: Grid, n_labels: int,
                 floor: float) -> Detections:
    """Raw grid cells -> xyxy boxes in input pixels, scores, labels (only candidates' boxes are decoded)."""
    box, obj, cls = yolox_rows(outputs, names, out, grid, n_labels)
    idx, scores, labels = dense_candidates(obj, cls, out, floor)
    if idx.size == 0:
        return NO_DETECTIONS
    s = grid.stride[idx]
    d = box[idx].astype(np.float32)
    cx, cy = (grid.gx[idx] + d[:, 0]) * s, (grid.gy[idx] + d[:, 1]) * s
    w, h = np.exp(np.minimum(d[:, 2], EXP_CAP)) * s, np.exp(np.minimum(d[:, 3], EXP_CAP)) * s
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return _finish(xyxy, scores, labels, out)
