"""The shapes generator and the generator registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.dataset import Example
from trainer.synthetic import Generator, available_generators, get_generator
from trainer.synthetic.shapes import CLASSES


def test_classification_images_have_labels_and_are_reproducible(tmp_path: Path):
    gen = get_generator("shapes")
    a = gen.generate(30, np.random.default_rng(5), tmp_path / "a")
    b = gen.generate(30, np.random.default_rng(5), tmp_path / "b")
    assert [e.id for e in a] == [e.id for e in b]
    assert len({e.id for e in a}) == 30
    assert {e.label for e in a} == set(CLASSES)
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(Image.open(x.image_path)), np.asarray(Image.open(y.image_path)))
    with Image.open(a[0].image_path) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert all(e.source == "synthetic" and e.boxes == () for e in a)


def test_detection_boxes_are_normalized_and_inside_the_image(tmp_path: Path):
    ex = get_generator("shapes", task="detection").generate(20, np.random.default_rng(1), tmp_path)
    assert all(e.label is None and 1 <= len(e.boxes) <= 4 for e in ex)
    for e in ex:
        for b in e.boxes:
            assert 0 <= b.x1 < b.x2 <= 1 and 0 <= b.y1 < b.y2 <= 1 and b.label in CLASSES
    with Image.open(ex[0].image_path) as im:
        assert im.size == (128, 128)
    # the box really surrounds a drawn shape: its pixels differ from the border around it
    img = np.asarray(Image.open(ex[0].image_path)).astype(float)
    b = ex[0].boxes[0]
    x1, y1, x2, y2 = (int(v * 128) for v in (b.x1, b.y1, b.x2, b.y2))
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    assert np.abs(img[cy, cx] - img[max(0, y1 - 2), max(0, x1 - 2)]).sum() > 0


def test_drift_changes_the_look(tmp_path: Path):
    plain = get_generator("shapes").generate(40, np.random.default_rng(0), tmp_path / "d0")
    drifted = get_generator("shapes", drift=1.0).generate(40, np.random.default_rng(0), tmp_path / "d1")

    def mean_brightness(examples):
        return float(np.mean([np.asarray(Image.open(e.image_path)).mean() for e in examples]))
    assert mean_brightness(drifted) < mean_brightness(plain) - 30
    assert all(e.meta["drift"] == 1.0 for e in drifted)


def test_bad_parameters_and_unknown_names_are_errors():
    with pytest.raises(ValueError, match="drift"):
        get_generator("shapes", drift=2)
    with pytest.raises(ValueError, match="task"):
        get_generator("shapes", task="segmentation")
    with pytest.raises(KeyError, match="unknown generator 'nope'.*shapes"):
        get_generator("nope")
    assert "shapes" in available_generators()


class _Blank:
    name, task = "blank", "classification"

    def generate(self, n, rng, out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        out = []
        for i in range(n):
            path = out_dir / f"blank{i}.png"
            Image.new("RGB", (8, 8), (int(rng.integers(256)),) * 3).save(path)
            out.append(Example(id=f"blank{i}", image_path=path, label="blank", source="synthetic"))
        return out


def blank_factory(**_params) -> Generator:
    return _Blank()


def test_a_generator_registers_by_module_path(tmp_path: Path):
    gen = get_generator("test_synthetic_shapes:blank_factory")
    assert isinstance(gen, Generator)
    assert len(gen.generate(3, np.random.default_rng(0), tmp_path)) == 3
