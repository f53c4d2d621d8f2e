"""Learning curves: the JSON schema, the summary figures and the PNG.

The JSON is ``{"metric_name": ..., "curves": {STRATEGY: [[{"labels": n,
"metric": m}, ...] one list per seed]}}`` plus a few descriptive keys
(``dataset``, ``task``, ``settings``, ``summary``, ``comparison``,
``seconds``) that readers of the schema may ignore. ``comparison`` is the
honest reading of the curves: labels each strategy needs to reach given
accuracies, the same compared with the baseline paired by seed, the worst
drop from one round to the next, and rounds where a strategy falls more than
one standard deviation below the reference (margin). ``markdown`` renders it
as the tables in docs/replay.md.
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


def labels_to_reach(curve: Curve, target: float) -> float | None:
    """Labels at which ``curve`` first reaches ``target``, linearly interpolated between rounds; None if never."""
    prev = None
    for p in curve:
        if p["metric"] >= target:
            if prev is None or p["metric"] == prev["metric"]:
                return float(p["labels"])
            t = (target - prev["metric"]) / (p["metric"] - prev["metric"])
            return float(prev["labels"] + t * (p["labels"] - prev["labels"]))
        prev = p
    return None


def _mean_points(runs: list[Curve]) -> Curve:
    x, mean, _ = mean_curve(runs)
    return [{"labels": int(a), "metric": float(b)} for a, b in zip(x, mean)]


def worst_drop(runs: list[Curve]) -> dict:
    """The largest fall from one round to the next: on any single seed, and on the mean curve."""
    single = max((r[i - 1]["metric"] - r[i]["metric"] for r in runs for i in range(1, len(r))), default=0.0)
    mean = _mean_points(runs)
    on_mean = max((mean[i - 1]["metric"] - mean[i]["metric"] for i in range(1, len(mean))), default=0.0)
    return {"any_seed": round(max(single, 0.0), 6), "mean_curve": round(max(on_mean, 0.0), 6)}


def compare(curves: dict[str, list[Curve]], baseline: str = "random", reference: str = "margin",
            targets: tuple[float, ...] = ()) -> dict:
    """Per strategy: labels to reach each target (mean curve) and the baseline's final mean; paired by seed,
    labels to reach the baseline's own final metric on the same seed; worst drops; rounds below the reference.

    ``label_ratio`` is labels to reach the baseline's final mean ÷ the labels the baseline needs to reach it
    (both on mean curves, interpolated between rounds): 0.6 means the strategy got there with 60 % of the labels.
    """
    out: dict = {"baseline": baseline, "reference": reference, "strategies": {}}
    base = curves.get(baseline)
    goal = float(mean_curve(base)[1][-1]) if base else None
    # What the baseline itself needs to reach its final mean (less than its budget when its curve dips at the end).
    base_labels = labels_to_reach(_mean_points(base), goal) if base else None
    out["baseline_final"] = goal
    ref = mean_curve(curves[reference]) if reference in curves else None
    for name, runs in curves.items():
        mean = _mean_points(runs)
        row: dict = {"reach": {f"{t:g}": labels_to_reach(mean, t) for t in targets}, "drop": worst_drop(runs)}
        if goal is not None:
            need = labels_to_reach(mean, goal)
            row["reach_baseline_final"] = need
            row["label_ratio"] = round(need / base_labels, 4) if need is not None else None
            paired = [labels_to_reach(r, b[-1]["metric"]) for r, b in zip(runs, base)]
            row["paired_reach_baseline_final"] = paired
            diffs = [area_under_curve(r) - area_under_curve(b) for r, b in zip(runs, base)]
            row["paired_area_vs_baseline"] = {"mean": round(float(np.mean(diffs)), 6),
                                              "std": round(float(np.std(diffs)), 6),
                                              "wins": sum(d > 0 for d in diffs), "seeds": len(diffs)}
        if ref is not None:
            _, m, _ = mean_curve(runs)
            n = min(len(m), len(ref[1]))
            row["below_reference_by_more_than_std"] = [int(ref[0][i]) for i in range(n)
                                                       if m[i] < ref[1][i] - ref[2][i] - 1e-9]
        out["strategies"][name] = row
    return out


def fmt_labels(v: float | None) -> str:
    return "never" if v is None else f"{v:.0f}"


def markdown(result: dict) -> str:
    """The curves table (mean ± std per round, area, labels to reach the baseline's final) for docs/replay.md."""
    curves, comp = result["curves"], result.get("comparison", {})
    names = list(curves)
    x = mean_curve(curves[names[0]])[0]
    head = "| strategy | " + " | ".join(f"{int(v)}" for v in x) + " | area | labels to baseline's final | worst drop |"
    lines = [head, "|" + "---|" * (len(x) + 4)]
    for name in names:
        _, m, sd = mean_curve(curves[name])
        s = result.get("summary", {}).get(name) or summarize({name: curves[name]})[name]
        row = comp.get("strategies", {}).get(name, {})
        ratio = row.get("label_ratio")
        reach = fmt_labels(row.get("reach_baseline_final")) + (f" ({ratio:.2f}×)" if ratio is not None else "")
        drop = row.get("drop", worst_drop(curves[name]))
        cells = [f"{a:.3f} ± {b:.3f}" for a, b in zip(m, sd)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['auc_mean']:.3f} ± {s['auc_std']:.3f} | {reach} | "
                     f"{drop['mean_curve']:.3f} (seed {drop['any_seed']:.3f}) |")
    return "\n".join(lines) + "\n"


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
    base = result.get("comparison", {}).get("baseline_final")
    if base is not None:  # the level the label-cost comparison asks about
        ax.axhline(base, color="0.5", lw=0.8, ls=":", label=f"random's final {base:.3f}")
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
