"""Learning curves: the JSON schema, the summary figures and the PNG.

The JSON is ``{"metric_name": ..., "curves": {STRATEGY: [[{"labels": n,
"metric": m}, ...] one list per seed]}}`` plus a few descriptive keys
(``dataset``, ``task``, ``settings``, ``summary``, ``seconds``) that readers
of the schema may ignore.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from trainer.train.checkpoint import atomic_write_bytes, atomic_write_json

Curve = list[dict]  # [{"labels": int, "metric": float}, ...]
METRIC_LABELS = {"accuracy": "accuracy", "map_50": "mAP@0.5", "map": "mAP@0.5:0.95"}


def mean_curve(runs: list[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label counts, mean and standard deviation over seeds (runs share their label counts)."""
    n = min(len(r) for r in runs)
    labels = np.array([runs[0][i]["labels"] for i in range(n)], float)
    values = np.array([[r[i]["metric"] for i in range(n)] for r in runs], float)
    return labels, values.mean(0), values.std(0)


def area_under_curve(curve: Curve) -> float:
    """Mean metric over the label range (trapezoids normalised by the range): one number per run."""
    x = np.array([p["labels"] for p in curve], float)
    y = np.array([p["metric"] for p in curve], float)
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean()) if len(y) else math.nan
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def summarize(curves: dict[str, list[Curve]]) -> dict[str, dict]:
    """Per strategy: mean area under the curve, its spread over seeds, the final metric."""
    out = {}
    for name, runs in curves.items():
        aucs = [area_under_curve(r) for r in runs]
        finals = [r[-1]["metric"] for r in runs if r]
        out[name] = {"auc_mean": float(np.mean(aucs)), "auc_std": float(np.std(aucs)),
                     "final_mean": float(np.mean(finals)), "final_std": float(np.std(finals)),
                     "final_labels": runs[0][-1]["labels"] if runs and runs[0] else 0, "seeds": len(runs)}
    return out


def write_json(path: Path, result: dict) -> None:
    atomic_write_json(Path(path), result)


def plot(result: dict, path: Path, title: str | None = None) -> None:
    """Mean curve per strategy with a band of one standard deviation over seeds."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, runs in result["curves"].items():
        if not runs or not runs[0]:
            continue
        x, mean, std = mean_curve(runs)
        auc = result.get("summary", {}).get(name, {}).get("auc_mean")
        label = f"{name} (area {auc:.3f})" if auc is not None else name
        (line,) = ax.plot(x, mean, marker="o", ms=3, label=label, ls="--" if name == "random" else "-")
        if len(runs) > 1:
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
    seeds = max((len(r) for r in result["curves"].values()), default=0)
    ax.set_xlabel("labels used (seed set + picked batches)")
    metric = METRIC_LABELS.get(result["metric_name"], result["metric_name"])
    ax.set_ylabel(f"{metric} on the held-out test split")
    name = Path(str(result.get("dataset", "replay"))).name or "replay"
    ax.set_title(title or f"{name}: mean ± 1 std over {seeds} seed(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
