"""Models, augmentations and configs: lookup by name, custom registration, box-aware transforms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from trainer.train.augment import build_transform
from trainer.train.config import AugmentConfig, load_config
from trainer.train.errors import TrainingError
from trainer.train.models import ModelSpec, SmallCNN, available_models, build_model, get_spec, load_pretrained


def custom_spec() -> ModelSpec:
    return ModelSpec("custom", "classification", lambda c, s: SmallCNN(c, width=4), 32, "logits")


def zero_out(task: str, input_size: int):
    assert task == "classification" and input_size == 16
    return v2.Lambda(lambda img: img * 0)


def test_builtin_models_and_a_custom_one_by_module_path():
    assert {"small_cnn", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet18",
            "efficientnet_b0"} <= set(available_models("classification"))
    assert {"tiny_det", "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn"} <= set(
        available_models("detection"))
    spec = get_spec("test_train_registry:custom_spec")
    assert build_model(spec, 5, 32)(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    assert build_model(get_spec("mobilenet_v3_small"), 4, 64)(torch.rand(1, 3, 64, 64)).shape == (1, 4)
    v2 = build_model(get_spec("mobilenet_v2"), 3, 64)
    assert v2(torch.rand(1, 3, 64, 64)).shape == (1, 3) and v2.classifier[-1].in_features == 1280
    with pytest.raises(TrainingError, match="unknown model 'alexnet9'.*small_cnn"):
        get_spec("alexnet9")
    with pytest.raises(TrainingError, match="must be a trainer.train.models.ModelSpec"):
        get_spec("pathlib:PurePath")


def test_every_builtin_model_is_in_the_docs_model_and_embedding_tables():
    from trainer.train.models import BUILTIN

    docs = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    models = docs.split("## Models", 1)[1].split("\n\n", 2)[1]
    embeddings = docs.split("| model | taken from | D |", 1)[1].split("\n\n", 1)[0]
    for name, spec in BUILTIN.items():
        assert f"`{name}`" in models, f"docs/training.md's model table lacks {name}"
        if spec.task == "classification":
            assert f"`{name}`" in embeddings, f"docs/training.md's embedding table lacks {name}"


def test_pretrained_weights_from_a_file_skip_the_new_head(tmp_path: Path):
    donor = SmallCNN(10)
    torch.save(donor.state_dict(), tmp_path / "w.pt")
    model = SmallCNN(3)
    head_before = model.head[-1].weight.clone()
    load_pretrained(model, str(tmp_path / "w.pt"))
    assert torch.equal(model.features[0].weight, donor.features[0].weight)
    assert torch.equal(model.head[-1].weight, head_before)  # 10 -> 3 classes: left at its init
    with pytest.raises(TrainingError, match="neither a file nor a torchvision weights name"):
        load_pretrained(model, "NoSuch_Weights.V9")


def test_defaults_are_realistic_and_a_custom_augmentation_plugs_in():
    cfg = AugmentConfig()
    assert cfg.vflip == 0.0 and cfg.hflip == 0.5 and cfg.enabled
    names = [type(t).__name__ for t in build_transform(cfg, "classification", 64).transforms]
    assert "RandomVerticalFlip" not in names and "RandomHorizontalFlip" in names and "RandomErasing" in names
    tf = build_transform(AugmentConfig(custom=("test_train_registry:zero_out",)), "classification", 16)
    out = tf(tv_tensors.Image(torch.full((3, 16, 16), 200, dtype=torch.uint8)))
    assert out.dtype == torch.float32 and float(out.abs().max()) == 0.0
    with pytest.raises(TrainingError, match="unknown augmentation 'sparkles'"):
        build_transform(AugmentConfig(custom=("sparkles",)), "classification", 16)


def test_detection_transforms_move_the_boxes_with_the_pixels():
    cfg = AugmentConfig(hflip=1.0, rotate_degrees=0, translate=0, scale=(1.0, 1.0), perspective=0, brightness=0,
                        contrast=0, saturation=0, hue=0, blur=0, noise=0, erase=0)
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    img[:, 10:20, 5:15] = 255
    boxes = tv_tensors.BoundingBoxes([[5, 10, 15, 20], [60, 60, 64, 64]], format="XYXY", canvas_size=(64, 64))
    out, target = build_transform(cfg, "detection", 64)(tv_tensors.Image(img),
                                                        {"boxes": boxes, "labels": torch.tensor([1, 2])})
    assert target["boxes"][0].tolist() == [49, 10, 59, 20]
    assert float(out[:, 10:20, 49:59].min()) == 1.0 and float(out[:, 10:20, 5:15].max()) == 0.0
    # heavy zoom-out shrinks the 4 px box below the minimum size; it is dropped with its label
    zoom = build_transform(cfg.model_copy(update={"scale": (0.3, 0.3)}), "detection", 64)
    _, t2 = zoom(tv_tensors.Image(img), {"boxes": boxes, "labels": torch.tensor([1, 2])})
    assert t2["labels"].tolist() == [1]


def test_config_errors_name_the_bad_key(tmp_path: Path):
    with pytest.raises(TrainingError, match=r"augment\.vflipp"):
        load_config(None, augment={"vflipp": 0.1})
    with pytest.raises(TrainingError, match=r"splits.*ratios must be three"):
        load_config(None, splits={"ratios": (0.5, 0.2, 0.2)})
    toml = tmp_path / "t.toml"
    toml.write_text('model = "resnet18"\nepochs = 5\n[augment]\nvflip = 0.5\n')
    cfg = load_config(toml, epochs=7)
    assert (cfg.model, cfg.epochs, cfg.augment.vflip) == ("resnet18", 7, 0.5)
