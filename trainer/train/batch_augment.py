"""Classification augmentation for a whole batch at once, on the batch's device.

Per-image torchvision transforms cost about a millisecond of Python per image;
a small model on a CPU trains on an image in about as long, so per-image
augmentation would halve training speed. Here every step is a handful of
tensor operations over the batch, with each image drawing its own random
parameters: flips, one affine warp (rotation, scale, translation, and a small
shear standing in for perspective), colour jitter (brightness, contrast,
saturation, hue as a rotation in YIQ space), blur, noise and occluders. The
same ``AugmentConfig`` drives it; detection and custom steps use the
per-image pipeline in ``augment.py``, which moves boxes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.train.config import AugmentConfig

_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_GRAY = (0.299, 0.587, 0.114)


class BatchAugment:
    """``aug(images)``: float [B, 3, H, W] in [0, 1] -> augmented, same shape, same device."""

    def __init__(self, cfg: AugmentConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = seed
        self._gen: torch.Generator | None = None

    def _rand(self, *shape: int, device: torch.device) -> Tensor:
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return torch.rand(*shape, generator=self._gen, device=device)

    def _sym(self, n: int, amount: float, device: torch.device) -> Tensor:
        """Uniform in [-amount, amount]."""
        return (self._rand(n, device=device) * 2 - 1) * amount

    def __call__(self, x: Tensor) -> Tensor:
        if not self.cfg.enabled:
            return x
        x = self._geometric(x)
        x = self._colour(x)
        x = self._blur(x)
        c, dev, b = self.cfg, x.device, x.shape[0]
        if c.noise > 0 and c.noise_sigma > 0:
            idx = (self._rand(b, device=dev) < c.noise).nonzero().flatten()
            if len(idx):
                noise = torch.randn((len(idx), *x.shape[1:]), generator=self._gen, device=dev) * c.noise_sigma
                x = x.index_add(0, idx, noise)
        if c.erase > 0:
            x = self._erase(x)
        return x.clamp(0.0, 1.0)

    def _geometric(self, x: Tensor) -> Tensor:
        c, dev, b = self.cfg, x.device, x.shape[0]
        if not (c.hflip or c.vflip or c.rotate_degrees or c.translate or c.perspective or c.scale != (1.0, 1.0)):
            return x
        angle = self._sym(b, math.radians(c.rotate_degrees), dev)
        lo, hi = c.scale
        scale = lo + self._rand(b, device=dev) * (hi - lo)
        shear = self._sym(b, 0.5 * c.perspective, dev) * (self._rand(b, device=dev) < 0.3)
        fx = torch.where(self._rand(b, device=dev) < c.hflip, -1.0, 1.0)
        fy = torch.where(self._rand(b, device=dev) < c.vflip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # theta maps output to input coordinates in [-1, 1]; the grid spans 2 units, hence 2 * translate.
        theta = torch.stack([
            torch.stack([cos * fx, (-sin + shear * cos) * fy, self._sym(b, 2 * c.translate, dev)], 1),
            torch.stack([sin * fx, (cos + shear * sin) * fy, self._sym(b, 2 * c.translate, dev)], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _colour(self, x: Tensor) -> Tensor:
        c, dev, b = self.cfg, x.device, x.shape[0]
        if max(c.brightness, c.contrast, c.saturation, c.hue) == 0:
            return x
        on = self._rand(b, device=dev) < 0.8

        def factor(amount: float) -> Tensor:
            return torch.where(on, 1 + self._sym(b, amount, dev), 1.0).view(b, 1, 1, 1)
        gray_w = torch.tensor(_GRAY, device=dev).view(1, 3, 1, 1)
        x = x * factor(c.brightness)
        mean = (x * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = (x - mean) * factor(c.contrast) + mean
        gray = (x * gray_w).sum(1, keepdim=True)
        x = (x - gray) * factor(c.saturation) + gray
        if c.hue > 0:
            h = torch.where(on, self._sym(b, c.hue * 2 * math.pi, dev), 0.0)
            rot = torch.zeros(b, 3, 3, device=dev)
            rot[:, 0, 0] = 1.0
            rot[:, 1, 1], rot[:, 1, 2] = torch.cos(h), -torch.sin(h)
            rot[:, 2, 1], rot[:, 2, 2] = torch.sin(h), torch.cos(h)
            yiq = _RGB_TO_YIQ.to(dev)
            m = torch.linalg.inv(yiq) @ rot @ yiq
            x = torch.einsum("bij,bjhw->bihw", m, x)
        return x.clamp(0.0, 1.0)

    def _blur(self, x: Tensor) -> Tensor:
        c, dev, b = self.cfg, x.device, x.shape[0]
        if c.blur <= 0:
            return x
        idx = (self._rand(b, device=dev) < c.blur).nonzero().flatten()
        if not len(idx):
            return x
        # A separable [1, 2, 1] / 4 kernel on the chosen images only (a depthwise conv is slower on CPUs).
        y = F.pad(x[idx], (1, 1, 1, 1), mode="replicate")
        y = 0.25 * y[..., :-2] + 0.5 * y[..., 1:-1] + 0.25 * y[..., 2:]
        y = 0.25 * y[..., :-2, :] + 0.5 * y[..., 1:-1, :] + 0.25 * y[..., 2:, :]
        x = x.clone()
        x[idx] = y
        return x

    def _erase(self, x: Tensor) -> Tensor:
        """One rectangle of a random colour (2-10 % of the image) on a share of the images: an occluder."""
        b, _, h, w = x.shape
        dev = x.device
        area = 0.02 + self._rand(b, device=dev) * 0.08
        ratio = torch.exp(math.log(0.3) + self._rand(b, device=dev) * (math.log(3.3) - math.log(0.3)))
        eh = (torch.sqrt(area * ratio) * h).clamp(1, h)
        ew = (torch.sqrt(area / ratio) * w).clamp(1, w)
        top = self._rand(b, device=dev) * (h - eh)
        left = self._rand(b, device=dev) * (w - ew)
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        inside = ((ys >= top.view(b, 1, 1)) & (ys < (top + eh).view(b, 1, 1))
                  & (xs >= left.view(b, 1, 1)) & (xs < (left + ew).view(b, 1, 1)))
        on = (self._rand(b, device=dev) < self.cfg.erase).view(b, 1, 1)
        mask = (inside & on).unsqueeze(1)
        return torch.where(mask, self._rand(b, 3, 1, 1, device=dev), x)
