"""Per-round report files: loss curves, confusion matrix, metrics JSON, warnings.

``round.json`` always has a ``warnings`` list (what a person should look at:
for detection, suspicious boxes and the boxes augmentation dropped, from
``trainer.train.boxcheck``); each warning is also logged.

matplotlib is imported lazily with the Agg backend, so importing the trainer
never opens a display or pays matplotlib's start-up cost.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from trainer.train.checkpoint import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(history: list[dict], path: Path, title: str, best_epoch: int | None = None,
                overfit_epoch: int | None = None) -> None:
    plt = _pyplot()
    epochs = [h["epoch"] + 1 for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(epochs, [h["loss"] for h in history], marker="o", ms=3, label="loss (train)")
    val = [(h["epoch"] + 1, h["val_loss"]) for h in history if h["val_loss"] is not None]
    if val:
        ax.plot(*zip(*val), marker="o", ms=3, label="val loss")
    if best_epoch is not None and best_epoch >= 0:
        ax.axvline(best_epoch + 1, color="green", ls="--", lw=1, label="best (kept)")
    if overfit_epoch is not None:
        ax.axvline(overfit_epoch + 1, color="red", ls=":", lw=1, label="overfitting detected")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.6 * n))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max((max(r) for r in confusion), default=0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(confusion[i][j]), ha="center", va="center",
                    color="white" if confusion[i][j] > top / 2 else "black")
    ax.set_title(title)
    _save(fig, path)
    plt.close(fig)


def write_report(out_dir: Path, record: dict) -> dict[str, str]:
    """Write ``round.json`` (the full record), curves and, for classification, the confusion matrix."""
    out_dir = Path(out_dir)
    paths = {"record": str(out_dir / "round.json"), "curves": str(out_dir / "curves.png")}
    fit = record["fit"]
    plot_curves(fit["history"], out_dir / "curves.png", f"round {record['round']}: {record['model']}",
                fit.get("best_epoch"), fit.get("overfit_epoch"))
    test = record["metrics"]["test"]
    if record["task"] == "classification" and test.get("confusion"):
        paths["confusion"] = str(out_dir / "confusion.png")
        plot_confusion(test["confusion"], test["labels"], out_dir / "confusion.png",
                       f"test split, accuracy {test['accuracy']:.3f}")
    warnings = list(record.get("warnings") or [])
    for line in warnings:
        log.warning("round %s: %s", record["round"], line)
    atomic_write_json(out_dir / "round.json", record | {"warnings": warnings, "report": paths})
    return paths
