"""``edgeloop replay``: learning curves of sampling strategies on a labelled dataset.

Example::

    edgeloop replay --dataset digits --strategy margin,entropy,random --seeds 3 --out runs/replay

writes ``runs/replay/replay.json``, ``runs/replay/replay.png`` and
``runs/replay/replay.md`` (the comparison table).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from trainer.replay import datasets, report
from trainer.replay.loop import ReplayError, ReplaySettings, replay
from trainer.replay.pool import PoolError
from trainer.replay.strategies import StrategyError, parse_list
from trainer.train.errors import TrainingError

log = logging.getLogger(__name__)
DEFAULT_EPOCHS = 10  # per round: replay runs dozens of rounds, each from the previous model
# Metric levels whose label cost the comparison reports.
TARGETS = {"accuracy": (0.9, 0.95, 0.98), "map_50": (0.3, 0.4, 0.5), "map": (0.1, 0.2, 0.3)}


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _fraction(text: str) -> float:
    v = float(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {v}")
    return v


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True,
                        help="a labelled dataset folder, 'digits' (scikit-learn's) or 'synthetic:shapes'")
    parser.add_argument("--format", default="auto", choices=datasets.FORMATS, help="dataset format (default: auto)")
    parser.add_argument("--strategy", default="margin,random",
                        help="comma-separated agent strategies to compare, e.g. margin,entropy,least,random")
    parser.add_argument("--seeds", type=_positive, default=3, help="repeats per strategy (default 3)")
    parser.add_argument("--batch", type=_positive, default=40, help="labels picked per round (default 40)")
    parser.add_argument("--seed-per-class", type=_positive, default=2, help="initial labels per class (default 2)")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--rounds", type=_positive, default=None, help="rounds after the seed set (default 5)")
    stop.add_argument("--budget", type=_positive, default=None, help="stop at this many labels, seed set included")
    parser.add_argument("--model", default=None, help="trainer model name (default: small_cnn or tiny_det)")
    parser.add_argument("--epochs", type=_positive, default=None,
                        help=f"epochs per round (default {DEFAULT_EPOCHS}, or the --train-config's)")
    parser.add_argument("--input-size", type=_positive, default=None, help="model input size (default: the model's)")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--train-config", type=Path, default=None,
                        help="a trainer config file (JSON/TOML) for everything else about a round")
    parser.add_argument("--test-fraction", type=_fraction, default=0.2, help="held-out test share (default 0.2)")
    parser.add_argument("--metric", default=None, choices=["accuracy", "map_50", "map"],
                        help="curve metric (default: accuracy, or map_50 for detection)")
    parser.add_argument("--synthetic-count", type=_positive, default=600, help="images for synthetic:NAME")
    parser.add_argument("--synthetic-task", default="classification", choices=["classification", "detection"])
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"where digits and synthetic images are written (default {datasets.default_cache_dir()})")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch decides)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for replay.json and replay.png")


def build_train_config(args: argparse.Namespace, task: str):
    """The trainer's own config, with replay's per-round settings on top; export is always on."""
    from trainer.train.config import load_config

    if args.train_config is not None and not args.train_config.is_file():
        raise ReplayError(f"--train-config {args.train_config}: no such file")
    base = load_config(args.train_config)
    model = args.model or (base.model if args.train_config else None) or \
        ("small_cnn" if task == "classification" else "tiny_det")
    overrides = {"task": task, "model": model, "export": base.export.model_dump() | {"enabled": True}}
    if args.epochs or args.train_config is None:
        overrides["epochs"] = args.epochs or DEFAULT_EPOCHS
    if args.input_size:
        overrides["input_size"] = args.input_size
    if args.train_config is None:
        # Replay's rounds train on tens to hundreds of images: a worker process costs more than it saves.
        overrides["num_workers"] = 0
    if args.no_augment:
        overrides["augment"] = base.augment.model_dump() | {"enabled": False}
    try:
        return base.model_validate(base.model_dump() | overrides)
    except ValidationError as e:
        err = e.errors()[0]
        raise ReplayError(f"bad training setting {'.'.join(map(str, err['loc']))}: {err['msg']}") from e


def settings_from(args: argparse.Namespace) -> ReplaySettings:
    rounds = args.rounds if args.rounds is not None else (None if args.budget is not None else 5)
    return ReplaySettings(batch=args.batch, seed_per_class=args.seed_per_class, rounds=rounds, budget=args.budget,
                          seeds=args.seeds, test_fraction=args.test_fraction, metric=args.metric)


def execute(args: argparse.Namespace) -> dict:
    """Load, run every strategy and seed, write the JSON and PNG; returns the result document."""
    from trainer.train.data import infer_task

    t0 = time.perf_counter()
    cache = args.cache_dir or datasets.default_cache_dir()
    examples = datasets.load_examples(args.dataset, args.format, cache, args.synthetic_count,
                                      args.synthetic_task)
    task = infer_task(examples)
    strategies = parse_list(args.strategy, task)
    config = build_train_config(args, task)
    settings = settings_from(args)
    log.info("replay on %s: %d %s examples, strategies %s, %d seed(s)", args.dataset, len(examples), task,
             ", ".join(s.name for s in strategies), settings.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    result = replay(examples, task, strategies, config, settings, work_dir=args.out,
                    progress=lambda line: log.info("%s", line))
    result = {"metric_name": result.pop("metric_name"), "curves": result.pop("curves"),
              "dataset": args.dataset, **result}
    result["summary"] = report.summarize(result["curves"])
    reference = "margin" if task == "classification" else "threshold_band"
    targets = TARGETS[result["metric_name"]]
    result["comparison"] = report.compare(result["curves"], "random", reference, targets)
    result["settings"] = {"batch": settings.batch, "seed_per_class": settings.seed_per_class,
                          "rounds": settings.rounds, "budget": settings.budget, "seeds": settings.seeds,
                          "test_fraction": settings.test_fraction, "model": config.model,
                          "input_size": config.input_size, "epochs": config.epochs,
                          "augment": config.augment.enabled}
    result["timing"]["total_seconds"] = round(time.perf_counter() - t0, 2)
    report.write_json(args.out / "replay.json", result)
    report.plot(result, args.out / "replay.png")
    (args.out / "replay.md").write_text(report.markdown(result))
    return result


def run(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        result = execute(args)
    except (datasets.DatasetError, StrategyError, ReplayError, PoolError, TrainingError) as e:
        print(f"edgeloop replay: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    for name, s in result["summary"].items():
        print(f"{name:>16}: area {s['auc_mean']:.4f} ± {s['auc_std']:.4f}, final {result['metric_name']} "
              f"{s['final_mean']:.4f} ± {s['final_std']:.4f} at {s['final_labels']} labels ({s['seeds']} seeds)")
    comp = result["comparison"]
    if comp["baseline_final"] is not None:
        for name, row in comp["strategies"].items():
            print(f"{name:>16}: reaches random's final {result['metric_name']} {comp['baseline_final']:.4f} at "
                  f"{report.fmt_labels(row['reach_baseline_final'])} labels"
                  + (f" ({row['label_ratio']:.2f}x random's)" if row["label_ratio"] is not None else ""))
    print(json.dumps({"json": str(args.out / "replay.json"), "png": str(args.out / "replay.png"),
                      "seconds": result["timing"]["total_seconds"]}))
    return 0
