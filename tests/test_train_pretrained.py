"""Pretrained starts from a local file: what loads, what is left for the new head, what is refused.

No test needs downloaded weights: the files are state dicts saved here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.synthetic import get_generator
from trainer.train.config import TrainConfig
from trainer.train.errors import TrainingError
from trainer.train.models import build_model, get_spec
from trainer.train.round import run_round


def test_a_local_state_dict_loads_everything_but_a_head_of_another_size(tmp_path):
    spec = get_spec("small_cnn")
    torch.manual_seed(1)
    donor = build_model(spec, 10, 32)  # e.g. trained on ten classes elsewhere
    path = tmp_path / "donor.pt"
    torch.save(donor.state_dict(), path)
    torch.manual_seed(2)
    model = build_model(spec, 3, 32, weights=str(path))
    got, want = model.state_dict(), donor.state_dict()
    assert torch.equal(got["features.0.weight"], want["features.0.weight"])
    assert torch.equal(got["features.13.running_mean"], want["features.13.running_mean"])
    assert got["head.3.weight"].shape == (3, 128)  # the new head keeps its own initialization
    # {"model": state} and edgeloop checkpoints ({"state_dict": ...}) are read too
    torch.save({"model": donor.state_dict()}, tmp_path / "wrapped.pt")
    torch.save({"format": "edgeloop.checkpoint/1", "state_dict": donor.state_dict()}, tmp_path / "ckpt.pt")
    for name in ("wrapped.pt", "ckpt.pt"):
        m = build_model(spec, 3, 32, weights=str(tmp_path / name))
        assert torch.equal(m.state_dict()["features.4.weight"], want["features.4.weight"])


def test_weights_that_fit_nothing_or_name_nothing_are_refused(tmp_path):
    spec = get_spec("small_cnn")
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(TrainingError, match="none of the tensors"):
        build_model(spec, 3, 32, weights=str(tmp_path / "other.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(TrainingError, match="cannot load weights"):
        build_model(spec, 3, 32, weights=str(tmp_path / "junk.pt"))
    with pytest.raises(TrainingError, match="neither a file nor a torchvision weights name"):
        build_model(spec, 3, 32, weights="NoSuchNet_Weights.NOWHERE")


def test_the_first_round_starts_from_the_configured_weights_and_later_rounds_from_their_parent(tmp_path, caplog):
    examples = get_generator("shapes").generate(45, np.random.default_rng(3), tmp_path / "img")
    donor = build_model(get_spec("small_cnn"), 3, 32)
    torch.save(donor.state_dict(), tmp_path / "donor.pt")
    cfg = TrainConfig(input_size=32, epochs=1, min_steps=0, batch_size=16, num_workers=0, lr=1e-9,
                      weights=str(tmp_path / "donor.pt"), augment={"enabled": False}, export={"enabled": False})
    with caplog.at_level("INFO", logger="trainer.train.models"):
        first = run_round(examples, cfg, tmp_path / "r0")
    assert "loaded 26 tensors from" in caplog.text and "(0 left" in caplog.text  # all: same classes, shapes
    kept = torch.load(first.checkpoint, weights_only=True)["state_dict"]
    # with a vanishing learning rate the kept weights are the donor's (BN statistics still move)
    assert torch.allclose(kept["features.0.weight"], donor.state_dict()["features.0.weight"], atol=1e-6)
    caplog.clear()
    with caplog.at_level("INFO", logger="trainer.train.models"):
        run_round(examples, cfg, tmp_path / "r1", parent=first.checkpoint)
    assert "loaded" not in caplog.text  # an incremental round starts from its parent, not the weights
