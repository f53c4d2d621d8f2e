"""``edgeloop train``: one training round from a dataset folder or a synthetic generator.

Writes into --out: model.pt (checkpoint, which carries the splits so the next
round with --parent keeps the frozen test split), model.onnx (with its model
card), round.json (config, seed, dataset and code version, metrics, history),
curves.png and, for classification, confusion.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    src = parser.add_argument_group("data (one of --dataset or --synthetic)")
    src.add_argument("--dataset", type=Path, help="dataset folder (for coco: the annotations JSON file)")
    src.add_argument("--format", default="imagefolder", choices=["imagefolder", "voc", "coco", "yolo"],
                     help="layout of --dataset (read by trainer.data)")
    src.add_argument("--images-dir", type=Path, help="coco only: the folder the JSON's file names are in")
    src.add_argument("--synthetic", metavar="NAME", help="generate the data instead: a generator name, "
                     "e.g. 'shapes' (see trainer.synthetic)")
    src.add_argument("--n", type=int, default=300, help="number of synthetic examples")
    src.add_argument("--task", choices=["classification", "detection"],
                     help="task; inferred from the data when omitted (synthetic: classification)")
    src.add_argument("--drift", type=float, default=0.0, help="synthetic shapes: 0 = training look, 1 = drifted")
    m = parser.add_argument_group("model and training (override --config)")
    m.add_argument("--config", type=Path, help="TrainConfig as JSON or TOML (unknown keys are an error)")
    m.add_argument("--model", help="model name: small_cnn, mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large, "
                   "resnet18, efficientnet_b0, tiny_det, ssdlite320_mobilenet_v3_large, "
                   "fasterrcnn_mobilenet_v3_large_320_fpn, an edgeloop.models entry point or module:function "
                   "(default small_cnn)")
    m.add_argument("--weights", help="pretrained weights: a local .pt state dict or a torchvision weights name")
    m.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner; default 30)")
    m.add_argument("--batch-size", type=int, help="batch size (default 32)")
    m.add_argument("--input-size", type=int, help="square input side in pixels (default: the model's)")
    m.add_argument("--lr", type=float, help="peak learning rate (default 0.002)")
    m.add_argument("--seed", type=int, help="seed for splits, sampling and augmentation (default 0)")
    m.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: CUDA with AMP when present")
    m.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    r = parser.add_argument_group("round")
    r.add_argument("--out", type=Path, required=True, help="output folder (files replaced only on success)")
    r.add_argument("--parent", type=Path, help="checkpoint of the current model: an incremental round starts "
                   "from its weights and keeps its splits")
    r.add_argument("--full-retrain", action="store_true", help="with --parent: keep its splits, start from scratch")
    r.add_argument("--round", type=int, dest="round_index", help="round number (default: parent's + 1, or 0)")
    r.add_argument("--name", default="model", help="model name written into the model card")
    r.add_argument("--json", action="store_true", help="print the round summary as JSON")


def _examples(args: argparse.Namespace, round_index: int | None):
    import numpy as np

    from trainer.train.errors import TrainingError

    if (args.dataset is None) == (args.synthetic is None):
        raise TrainingError("give exactly one of --dataset DIR or --synthetic NAME")
    if args.synthetic:
        from trainer.synthetic import get_generator

        gen = get_generator(args.synthetic, task=args.task or "classification", drift=args.drift,
                            round_added=round_index or 0)
        return gen.generate(args.n, np.random.default_rng(args.seed or 0), args.out / "synthetic")
    try:
        from trainer.data.store_io import read_dataset
    except ImportError as e:
        raise TrainingError(f"reading --format {args.format} needs trainer.data ({e})") from e
    return read_dataset(args.format, args.dataset, args.images_dir)


def run(args: argparse.Namespace) -> int:
    from trainer.train.config import load_config
    from trainer.train.errors import TrainingError
    from trainer.train.round import run_round

    try:
        overrides = {"model": args.model, "weights": args.weights, "epochs": args.epochs,
                     "batch_size": args.batch_size, "input_size": args.input_size, "lr": args.lr, "seed": args.seed,
                     "device": args.device, "task": args.task, "full_retrain": True if args.full_retrain else None}
        config = load_config(args.config, **overrides)
        if args.no_augment:
            config = config.model_copy(update={"augment": config.augment.model_copy(update={"enabled": False})})
        examples = _examples(args, args.round_index)
        result = run_round(examples, config, args.out, parent=args.parent, round_index=args.round_index,
                           name=args.name)
    except (TrainingError, ValueError, KeyError, OSError) as e:
        print(f"edgeloop train: {e}", file=sys.stderr)
        return 1
    summary = {"round": result.round, "task": result.task, "model": result.model, "labels": result.labels,
               "split_counts": result.split_counts, "stop_reason": result.stop_reason, "overfit": result.overfit,
               "best_epoch": result.fit.best_epoch, "imbalance": result.imbalance,
               "dataset_version": result.dataset_version, "checkpoint": str(result.checkpoint),
               "onnx": str(result.onnx) if result.onnx else None, "report": result.report,
               "metrics": {k: v for k, v in result.metrics.items() if k in ("accuracy", "map", "map_50")},
               "seconds": round(result.seconds, 2)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"round {result.round} ({result.model}): {summary['metrics']} on the test split, "
              f"stopped: {result.stop_reason}{' (overfitting detected)' if result.overfit else ''}; "
              f"wrote {result.checkpoint}, {result.onnx}, {result.report.get('curves')}")
    return 0
