"""A tiny anchor-free detector (FCOS-style, one stride-8 level) that trains on CPU.

It follows torchvision's detection interface: ``model(images, targets)``
returns a loss dict, ``model(images)`` returns per-image dicts of boxes,
scores and 1-based labels in input pixels. ``model.dense(images)`` is the
exported graph: normalized xyxy boxes [B, N, 4] and per-class sigmoid scores
[B, N, C] for every grid point, which the agent thresholds and NMSes (the
model card's ``ssd`` output with no background column).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

STRIDE = 8


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyDet(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, center_radius: float = 1.5):
        super().__init__()
        self.num_classes = num_classes
        self.center_radius = center_radius
        w = width
        self.backbone = nn.Sequential(
            _block(3, w // 2, 2), _block(w // 2, w, 2), _block(w, w, 1),
            _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1), _block(2 * w, 2 * w, 1))
        self.cls_head = nn.Sequential(_block(2 * w, 2 * w, 1), nn.Conv2d(2 * w, num_classes, 1))
        self.box_head = nn.Sequential(_block(2 * w, 2 * w, 1), nn.Conv2d(2 * w, 4, 1))
        # Start with a low object prior so the focal loss does not drown in background.
        nn.init.constant_(self.cls_head[-1].bias, -4.6)

    def _raw(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feat = self.backbone(images)
        b, _, gh, gw = feat.shape
        logits = self.cls_head(feat).flatten(2).transpose(1, 2)  # [B, N, C]
        ltrb = nn.functional.softplus(self.box_head(feat)).flatten(2).transpose(1, 2) * STRIDE
        ys = (torch.arange(gh, device=images.device, dtype=ltrb.dtype) + 0.5) * STRIDE
        xs = (torch.arange(gw, device=images.device, dtype=ltrb.dtype) + 0.5) * STRIDE
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centers = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)  # [N, 2]
        boxes = torch.cat([centers - ltrb[..., :2], centers + ltrb[..., 2:]], dim=-1)
        return logits, boxes, centers

    def dense(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits, boxes, _ = self._raw(images)
        h, w = images.shape[-2], images.shape[-1]
        scale = torch.stack([boxes.new_tensor(1.0) * w, boxes.new_tensor(1.0) * h] * 2)
        return (boxes / scale).clamp(0.0, 1.0), logits.sigmoid()

    def forward(self, images: Tensor | list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images))
        logits, boxes, centers = self._raw(images)
        # Under CUDA autocast the heads run in bfloat16; assignment and losses need float32.
        logits, boxes, centers = logits.float(), boxes.float(), centers.float()
        if targets is not None:
            return self._loss(logits, boxes, centers, targets)
        return self._postprocess(logits.sigmoid(), boxes, images.shape[-2:])

    def _assign(self, centers: Tensor, gt: Tensor) -> Tensor:
        """Index of the GT each point learns (-1: background): inside the box and near its centre."""
        if gt.numel() == 0:
            return torch.full((centers.shape[0],), -1, dtype=torch.long, device=centers.device)
        cx, cy = centers[:, :1], centers[:, 1:]
        inside = (cx > gt[:, 0]) & (cx < gt[:, 2]) & (cy > gt[:, 1]) & (cy < gt[:, 3])
        gcx, gcy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
        r = self.center_radius * STRIDE
        near = ((cx - gcx).abs() < r) & ((cy - gcy).abs() < r)
        area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).expand(centers.shape[0], -1)
        area = torch.where(inside & near, area, torch.full_like(area, float("inf")))
        best_area, best = area.min(dim=1)
        return torch.where(torch.isinf(best_area), torch.full_like(best, -1), best)

    def _loss(self, logits: Tensor, boxes: Tensor, centers: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        cls_t = torch.zeros_like(logits)
        box_losses, num_pos = [], 0
        for i, t in enumerate(targets):
            idx = self._assign(centers, t["boxes"])
            pos = idx >= 0
            if pos.any():
                cls_t[i, pos, t["labels"][idx[pos]] - 1] = 1.0
                box_losses.append(generalized_box_iou_loss(boxes[i, pos], t["boxes"][idx[pos]], reduction="sum"))
                num_pos += int(pos.sum())
        norm = max(1, num_pos)
        cls_loss = sigmoid_focal_loss(logits, cls_t, reduction="sum") / norm
        box_loss = torch.stack(box_losses).sum() / norm if box_losses else logits.sum() * 0.0
        return {"classification": cls_loss, "box": 2.0 * box_loss}

    def _postprocess(self, scores: Tensor, boxes: Tensor, hw: tuple[int, int],
                     threshold: float = 0.001, iou: float = 0.5, top: int = 100) -> list[dict[str, Tensor]]:
        # Evaluation (test metrics, val mAP) keeps low scores as COCO does: AP ranks boxes, a cut hides
        # correct ones. The exported graph is dense(); the agents apply the card's threshold.
        h, w = hw
        out = []
        for s, b in zip(scores, boxes):
            b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], 1)
            point, cls = (s > threshold).nonzero(as_tuple=True)
            cand_boxes, cand_scores = b[point], s[point, cls]
            keep = batched_nms(cand_boxes, cand_scores, cls, iou)[:top]
            out.append({"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": cls[keep] + 1})
        return out
