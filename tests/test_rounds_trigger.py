"""The round trigger is a pure decision over the corrected count and the batch size."""

from __future__ import annotations

import pytest

from trainer.rounds.trigger import check_batch_size, decide


def test_starts_exactly_at_the_batch_size():
    assert not decide(39, 40).start
    d = decide(40, 40)
    assert d.start and "40 corrected examples reached the batch of 40" in d.reason
    assert decide(75, 40).start


def test_default_batch_is_40():
    assert not decide(39).start and decide(40).start


def test_never_while_a_round_runs():
    d = decide(100, 30, running=True)
    assert not d.start and "count towards the next" in d.reason


@pytest.mark.parametrize("size", [29, 51, 0, -1, 40.0, True, "40"])
def test_batch_size_outside_30_50_is_refused(size):
    with pytest.raises(ValueError, match="30 to 50"):
        decide(100, size)


@pytest.mark.parametrize("size", [30, 45, 50])
def test_allowed_batch_sizes(size):
    assert check_batch_size(size) == size
    assert decide(size, size).start and not decide(size - 1, size).start


def test_negative_count_is_a_bug():
    with pytest.raises(ValueError):
        decide(-1, 40)


def test_rounds_config_validates_the_training_config_at_start_up(tmp_path):
    from pydantic import ValidationError

    from trainer.rounds.pipeline import RoundsConfig

    assert RoundsConfig(work_dir=tmp_path, train={"epochs": 3}).train == {"epochs": 3}
    with pytest.raises(ValidationError, match="epohcs"):
        RoundsConfig(work_dir=tmp_path, train={"epohcs": 3})
    with pytest.raises(ValidationError, match="batch_sise"):
        RoundsConfig(work_dir=tmp_path, batch_sise=40)
