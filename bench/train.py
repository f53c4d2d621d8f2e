"""Training throughput of a round vs a bare torch loop, and one incremental round's wall time.

Project: ``run_round`` on synthetic shapes (decoding, augmentation, weighted
sampling, progress bars, val loss each epoch); throughput counts only the
training phase of each epoch, as the loop measures it. Baseline: the same
model, batch size, optimizer and number of steps over tensors already in
memory, with no augmentation. The two alternate (``--repeats`` rounds, one
more baseline) and each side's best run counts, because on a shared machine
other processes only slow a run down. Then an incremental round: 40 new examples on
top of 300, starting from the first round's checkpoint, timed end to end
(training, evaluation, ONNX export and verification, report).
"""

from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the throughput round and the baseline")
    parser.add_argument("--incremental-epochs", type=int, default=10, help="max epochs of the incremental round")
    parser.add_argument("--base", type=int, default=300, help="examples in the first round")
    parser.add_argument("--new", type=int, default=40, help="examples added for the incremental round")
    parser.add_argument("--workers", default="auto", help="DataLoader workers of the round: a number or auto")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs of each side (the best counts)")


def bare_loop(spec, n_classes: int, images: torch.Tensor, labels: torch.Tensor, batch: int, epochs: int,
              device: torch.device) -> float:
    """Images/s of the plainest loop: tensors in memory, shuffled slices, no augmentation."""
    from trainer.train.models import build_model

    torch.manual_seed(0)
    model = build_model(spec, n_classes, images.shape[-1]).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    images, labels = images.to(device), labels.to(device)
    steps = len(images) // batch
    seen, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(images), device=device)
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the loader's workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(args: argparse.Namespace) -> dict:
    from trainer.synthetic import get_generator
    from trainer.train.config import TrainConfig
    from trainer.train.data import ExampleDataset
    from trainer.train.augment import build_transform
    from trainer.train.loop import Normalizer, pick_device
    from trainer.train.models import get_spec
    from trainer.train.round import run_round

    workers = args.workers if args.workers == "auto" else int(args.workers)
    device = pick_device("auto")
    spec = get_spec(args.model)
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-train-") as tmp:
        root = Path(tmp)
        base = get_generator("shapes").generate(args.base, np.random.default_rng(0), root / "base")
        new = get_generator("shapes", drift=0.5, round_added=1).generate(args.new, np.random.default_rng(1), root / "new")
        common = {"model": args.model, "input_size": args.input_size, "batch_size": args.batch_size,
                  "num_workers": workers}
        # Throughput round: fixed epochs (no early stop) so both sides do the same work.
        cfg = TrainConfig(**common, epochs=args.epochs, patience=10**6, overfit_epochs=10**6,
                          export={"enabled": False})
        labels = sorted({e.label for e in base})
        ds = ExampleDataset(base, labels, "classification", args.input_size,
                            build_transform(cfg.augment, "classification", args.input_size, train=False))
        images = Normalizer(spec.mean, spec.std, torch.device("cpu"))(
            torch.stack([ds[i][0].as_subclass(torch.Tensor) for i in range(len(ds))]))
        targets = torch.tensor([labels.index(e.label) for e in base])
        # Alternate baseline and round and keep each side's best: on a shared machine
        # other processes only ever slow a run down, so the best is the least disturbed.
        # CPU seconds per image (this process and its DataLoader workers) are reported
        # too: they barely move with the machine's load.
        bares, rounds, walls, bare_cpu, round_cpu = [], [], [], [], []
        for i in range(args.repeats + 1):
            c0 = time.process_time()
            bares.append(bare_loop(spec, len(labels), images, targets, args.batch_size, args.epochs, device))
            bare_cpu.append((time.process_time() - c0) / (args.epochs * (len(images) // args.batch_size)
                                                          * args.batch_size))
            if i == args.repeats:
                break
            c0, t0 = _cpu(), time.perf_counter()
            first = run_round(base, cfg, root / f"round0-{i}")
            gc.collect()  # shut the loader's workers down so their CPU time is counted
            walls.append(time.perf_counter() - t0)
            rounds.append(first.fit.train_images_per_s)
            round_cpu.append((_cpu() - c0) / sum(h.images for h in first.fit.history))
        bare, best_round = max(bares), max(rounds)
        inc_cfg = TrainConfig(**common, epochs=args.incremental_epochs)
        t0 = time.perf_counter()
        inc = run_round(base + new, inc_cfg, root / "round1", parent=root / "round0-0" / "model.pt")
        inc_wall = time.perf_counter() - t0
    return {
        "device": str(device), "model": args.model, "input_size": args.input_size, "batch_size": args.batch_size,
        "epochs": args.epochs, "workers": workers, "torch_threads": torch.get_num_threads(),
        "round_train_images_per_s": round(best_round, 1), "round_runs": [round(x, 1) for x in rounds],
        "bare_images_per_s": round(bare, 1), "bare_runs": [round(x, 1) for x in bares],
        "ratio": round(best_round / bare, 3),
        "cpu_ms_per_image": {"round": round(1e3 * min(round_cpu), 2), "bare": round(1e3 * min(bare_cpu), 2)},
        "cpu_ratio": round(min(bare_cpu) / min(round_cpu), 3),
        "first_round_wall_s": [round(x, 2) for x in walls],
        "incremental": {"base": args.base, "new": args.new, "max_epochs": args.incremental_epochs,
                        "epochs_run": len(inc.fit.history), "stop_reason": inc.stop_reason,
                        "accuracy_before": first.metrics.get("accuracy"), "accuracy_after": inc.metrics.get("accuracy"),
                        "split_counts": inc.split_counts},
        "seconds": round(inc_wall, 2),
    }
