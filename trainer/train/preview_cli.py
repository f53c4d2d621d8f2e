"""``edgeloop augment-preview``: a PNG grid of augmented examples.

Each row is one example: the original first, then augmented variants, boxes
drawn for detection. Look at it before training: augmentation that produces
images the camera would never see only makes learning harder.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--dataset", type=Path, help="dataset folder (coco: the annotations JSON)")
    parser.add_argument("--format", default="imagefolder", choices=["imagefolder", "voc", "coco", "yolo"])
    parser.add_argument("--images-dir", type=Path, help="coco only: folder of the images")
    parser.add_argument("--synthetic", metavar="NAME", help="preview a generator's output instead (e.g. shapes)")
    parser.add_argument("--task", choices=["classification", "detection"], help="synthetic task")
    parser.add_argument("--config", type=Path, help="TrainConfig JSON/TOML whose 'augment' section to preview")
    parser.add_argument("--input-size", type=int, help="side in pixels (default: 64 classification, 128 detection)")
    parser.add_argument("--rows", type=int, default=4, help="number of examples")
    parser.add_argument("--cols", type=int, default=6, help="variants per example, original included")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")


def render_grid(examples, augment_cfg, task: str, size: int, rows: int, cols: int, seed: int) -> bytes:
    """PNG bytes of a rows x cols grid: column 0 the original, the rest augmented."""
    import torch
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes, make_grid

    from trainer.train.augment import build_transform
    from trainer.train.batch_augment import BatchAugment
    from trainer.train.data import ExampleDataset, labels_of

    torch.manual_seed(seed)
    labels = labels_of(examples, task)
    plain = ExampleDataset(examples[:rows], labels, task, size, build_transform(augment_cfg, task, size, train=False))
    augmented = ExampleDataset(examples[:rows], labels, task, size, build_transform(augment_cfg, task, size))
    batched = task == "classification" and augment_cfg.batched and not augment_cfg.custom
    if batched:  # what training does for classification: the batch augmenter over copies of each image
        originals = torch.stack([plain[i][0].as_subclass(torch.Tensor) for i in range(len(plain))])
        copies = BatchAugment(augment_cfg, seed)(originals.repeat_interleave(cols - 1, dim=0))
    tiles = []
    for i in range(len(plain)):
        for j in range(cols):
            if batched:
                img, target = (originals[i] if j == 0 else copies[i * (cols - 1) + j - 1]), None
            else:
                img, target = (plain if j == 0 else augmented)[i]
            img = (img.as_subclass(torch.Tensor) * 255).clamp(0, 255).to(torch.uint8)
            if task == "detection" and len(target["boxes"]):
                names = [labels[int(k) - 1] for k in target["labels"]]
                img = draw_bounding_boxes(img, target["boxes"], names, colors="yellow", width=1)
            tiles.append(img)
    grid = make_grid(tiles, nrow=cols, padding=2, pad_value=255)
    buf = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="edgeloop-preview-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, tmp: Path) -> int:
    import numpy as np

    from trainer.train.checkpoint import atomic_write_bytes
    from trainer.train.config import load_config
    from trainer.train.data import infer_task
    from trainer.train.errors import TrainingError

    try:
        config = load_config(args.config)
        if (args.dataset is None) == (args.synthetic is None):
            raise TrainingError("give exactly one of --dataset or --synthetic")
        if args.synthetic:
            from trainer.synthetic import get_generator

            gen = get_generator(args.synthetic, task=args.task or "classification")
            examples = gen.generate(args.rows, np.random.default_rng(args.seed), tmp)
        else:
            from trainer.data.store_io import read_dataset

            examples = read_dataset(args.format, args.dataset, args.images_dir)
        if not examples:
            raise TrainingError("no examples to preview")
        rng = np.random.default_rng(args.seed)
        examples = [examples[i] for i in rng.permutation(len(examples))[:args.rows]]
        task = args.task or config.task or infer_task(examples)
        size = args.input_size or config.input_size or (64 if task == "classification" else 128)
        png = render_grid(examples, config.augment, task, size, args.rows, args.cols, args.seed)
        atomic_write_bytes(args.out, png)
    except (TrainingError, ValueError, KeyError, OSError) as e:
        print(f"edgeloop augment-preview: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0
