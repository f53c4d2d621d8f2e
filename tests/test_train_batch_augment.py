"""The batch augmenter: per-image randomness, exact geometry when asked, reproducible for a seed."""

from __future__ import annotations

import torch

from trainer.train.batch_augment import BatchAugment
from trainer.train.config import AugmentConfig

OFF = dict(hflip=0.0, rotate_degrees=0, translate=0, scale=(1.0, 1.0), perspective=0, brightness=0, contrast=0,
           saturation=0, hue=0, blur=0, noise=0, erase=0)


def test_defaults_give_each_image_its_own_augmentation_within_range():
    x = torch.rand(1, 3, 32, 32).repeat(16, 1, 1, 1)
    y = BatchAugment(AugmentConfig(), seed=1)(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    distinct = {round(float(img.sum()), 3) for img in y}
    assert len(distinct) == 16  # same input, sixteen different outputs


def test_same_seed_same_batch_and_disabled_is_identity():
    x = torch.rand(8, 3, 24, 24)
    assert torch.equal(BatchAugment(AugmentConfig(), seed=3)(x), BatchAugment(AugmentConfig(), seed=3)(x))
    assert not torch.equal(BatchAugment(AugmentConfig(), seed=3)(x), BatchAugment(AugmentConfig(), seed=4)(x))
    assert torch.equal(BatchAugment(AugmentConfig(enabled=False))(x), x)
    assert torch.allclose(BatchAugment(AugmentConfig(**OFF))(x), x)


def test_flip_is_an_exact_mirror_and_vertical_flip_stays_off_by_default():
    x = torch.rand(4, 3, 16, 16)
    y = BatchAugment(AugmentConfig(**OFF | {"hflip": 1.0}))(x)
    assert torch.allclose(y, x.flip(-1), atol=1e-5)
    top_heavy = torch.zeros(64, 3, 16, 16)
    top_heavy[:, :, :4] = 1.0  # a bright band at the top
    y = BatchAugment(AugmentConfig(), seed=0)(top_heavy)
    assert bool((y[:, :, :6].mean((1, 2, 3)) > y[:, :, -6:].mean((1, 2, 3))).all())  # never upside down


def test_occluders_cover_a_small_patch_of_one_colour():
    x = torch.zeros(32, 3, 32, 32)
    y = BatchAugment(AugmentConfig(**OFF | {"erase": 1.0}), seed=2)(x)
    covered = (y.abs().sum(1) > 0).float().mean((1, 2))
    assert bool(((covered > 0.005) & (covered < 0.15)).all())
