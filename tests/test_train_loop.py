"""Pure parts of the training loop: the learning-rate schedule and the overfitting rule."""

from __future__ import annotations

import pytest

from trainer.train.loop import EpochStats, is_overfitting, lr_at


def history(pairs):
    return [EpochStats(i, loss, val, 1e-3, 1.0, 10) for i, (loss, val) in enumerate(pairs)]


def test_overfitting_needs_n_epochs_of_rising_val_loss_with_train_loss_down():
    climbing = history([(1.0, 1.0), (0.8, 0.9), (0.6, 1.0), (0.5, 1.1), (0.4, 1.2)])
    assert is_overfitting(climbing, 3)
    assert not is_overfitting(climbing[:4], 3)  # only two rises so far
    # train loss jitters near zero: still overfitting, it fell across the window
    jitter = history([(0.30, 0.9), (0.05, 1.0), (0.06, 1.1), (0.04, 1.3)])
    assert is_overfitting(jitter, 3)
    # both rising is divergence, not overfitting
    assert not is_overfitting(history([(0.5, 0.9), (0.6, 1.0), (0.7, 1.1), (0.8, 1.2)]), 3)
    # one dip in val loss resets it
    assert not is_overfitting(history([(1.0, 1.0), (0.8, 1.1), (0.6, 1.05), (0.5, 1.2)]), 3)
    assert not is_overfitting(history([(1.0, None), (0.8, None), (0.6, None), (0.5, None)]), 3)
    # a small validation set wobbling at its minimum is not overfitting...
    wobble = history([(1.0, 1.0), (0.5, 0.300), (0.3, 0.301), (0.25, 0.303), (0.2, 0.305)])
    assert not is_overfitting(wobble, 3)
    # ...unless the margin is set to zero and the rise clears the 0.01 floor
    assert is_overfitting(history([(1.0, 1.0), (0.5, 0.30), (0.3, 0.305), (0.25, 0.31), (0.2, 0.32)]), 3, margin=0)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.1)
    values = [lr_at(s, 100, 1.0, 10) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_a_diverging_loss_fails_the_round_with_advice(tmp_path):
    import numpy as np

    from trainer.synthetic import get_generator
    from trainer.train.config import TrainConfig
    from trainer.train.errors import TrainingError
    from trainer.train.round import run_round

    examples = get_generator("shapes").generate(45, np.random.default_rng(0), tmp_path / "img")
    # min_steps=0: the loss is non-finite from the first steps; the 200-step floor only made it take longer.
    cfg = TrainConfig(input_size=16, epochs=2, batch_size=16, lr=1e12, num_workers=0, min_steps=0,
                      export={"enabled": False})
    with pytest.raises(TrainingError, match="lower the learning rate"):
        run_round(examples, cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "model.pt").exists()


def test_the_step_floor_makes_small_epochs_draw_more_full_batches():
    from trainer.train.round import samples_per_epoch

    assert samples_per_epoch(20, 32, 10, 200) == 20 * 32    # 1 step an epoch -> 20 steps an epoch
    assert samples_per_epoch(100, 32, 10, 200) == 20 * 32   # 3 full batches (drop_last) -> 20
    assert samples_per_epoch(1000, 32, 10, 200) == 1000     # 31 steps an epoch already: unchanged
    assert samples_per_epoch(20, 32, 10, 0) == 20           # the floor off
    assert samples_per_epoch(20, 32, 7, 200) == 29 * 32     # rounded up to whole batches


def test_the_kept_epoch_follows_the_metric_with_ties_going_to_the_lower_val_loss():
    from trainer.train.loop import FitOptions, _Best

    def run(on, epochs):
        best = _Best(FitOptions(10, 1e-3, 0, 3, 4, 1e-4, False, early_stop_on=on))
        return [best.update(EpochStats(i, 1.0, v, 1e-3, 1.0, 10, m)) for i, (v, m) in enumerate(epochs)]
    epochs = [(0.50, 0.80), (0.40, 0.80), (0.45, 0.90), (0.30, 0.85), (0.35, 0.90)]
    # epoch 1 ties epoch 0's accuracy with a lower loss; epoch 4 ties epoch 2's, again with a lower loss
    assert run("val_metric", epochs) == [True, True, True, False, True]
    assert run("val_loss", epochs) == [True, True, False, True, False]
    # no validation split: the train loss is all there is, whatever was asked for
    best = _Best(FitOptions(10, 1e-3, 0, 3, 4, 1e-4, False, early_stop_on="val_metric"))
    assert best.update(EpochStats(0, 1.0, None, 1e-3, 1.0, 10)) and best.watched == "train_loss"


def test_a_tiny_round_takes_its_floor_of_steps_reports_the_metric_and_does_not_stop_too_early(tmp_path):
    import numpy as np

    from trainer.synthetic import get_generator
    from trainer.train.config import TrainConfig
    from trainer.train.round import run_round

    examples = get_generator("shapes").generate(45, np.random.default_rng(0), tmp_path / "img")
    cfg = TrainConfig(input_size=16, epochs=8, batch_size=32, min_steps=40, min_epochs=6, patience=1,
                      early_stop_on="val_metric", num_workers=0, augment={"enabled": False},
                      export={"enabled": False})
    fit = run_round(examples, cfg, tmp_path / "out").fit
    assert fit.steps >= 40 and len(fit.history) >= 6  # patience 1 alone could stop after two epochs
    assert fit.metric_name == "accuracy" and fit.watched == "val_metric"
    assert all(0 <= h.val_metric <= 1 for h in fit.history)
    assert fit.best_val_metric == max(h.val_metric for h in fit.history)


def test_new_examples_are_oversampled_but_never_take_over_the_draws(tmp_path):
    from trainer.dataset import Example
    from trainer.train.data import sample_weights

    def data(old, new):
        return ([Example(id=f"o{i}", image_path=tmp_path / "x", label="ab"[i % 2]) for i in range(old)]
                + [Example(id=f"n{i}", image_path=tmp_path / "x", label="ab"[i % 2], round_added=5) for i in range(new)])
    big = sample_weights(data(420, 40), "classification", True, 5, 3.0, 0.25)
    assert big[-1] == 3.0 and big[0] == 1.0                     # 120 of 540 draws: under the cap, full factor
    small = sample_weights(data(100, 40), "classification", True, 5, 3.0, 0.25)
    assert small[-1] == 1.0                                      # 3x would be 55 % of the draws: no oversampling
    mid = sample_weights(data(200, 40), "classification", True, 5, 3.0, 0.25)
    assert abs(40 * mid[-1] / (40 * mid[-1] + 200) - 0.25) < 1e-9  # capped at exactly a quarter
    assert sample_weights(data(100, 40), "classification", True, 5, 3.0, 1.0)[-1] == 3.0  # no cap


def test_the_weight_average_ramps_up_then_follows_the_last_steps():
    import math

    import torch
    from torch import nn

    from trainer.train.loop import WeightAverage

    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    avg = WeightAverage(model, decay=0.9, ramp=10)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(4.0)
    avg.update(model)
    d1 = 0.9 * (1 - math.exp(-0.1))  # the first update barely remembers the starting weights
    assert avg.model[0].weight.flatten().tolist() == pytest.approx([1 - d1] * 2)
    assert avg.model[1].running_mean.item() == pytest.approx(4 * (1 - d1))  # float buffers are averaged
    assert avg.model[1].num_batches_tracked.item() == model[1].num_batches_tracked.item()  # counters copied
    for _ in range(200):
        avg.update(model)
    assert avg.model[0].weight.flatten().tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert not any(p.requires_grad for p in avg.model.parameters())
    assert model[0].weight.requires_grad  # the live model still trains


def test_with_a_weight_average_the_round_keeps_and_exports_the_average(tmp_path):
    import numpy as np
    import torch

    from trainer.synthetic import get_generator
    from trainer.train.config import TrainConfig
    from trainer.train.round import run_round

    examples = get_generator("shapes").generate(45, np.random.default_rng(0), tmp_path / "img")

    def kept(ema):
        cfg = TrainConfig(input_size=16, epochs=3, batch_size=16, min_steps=30, num_workers=0, ema_decay=ema,
                          augment={"enabled": False}, export={"enabled": False})
        out = tmp_path / f"out{ema}"
        run_round(examples, cfg, out)
        return torch.load(out / "model.pt", weights_only=False)["state_dict"]

    plain, averaged = kept(0.0), kept(0.9)
    # Same data, seed and steps: only the averaging differs, and it changes what is kept.
    assert plain.keys() == averaged.keys()
    assert any(not torch.allclose(plain[k], averaged[k]) for k in plain if plain[k].dtype.is_floating_point)
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)  # 1 would never move from the starting weights
