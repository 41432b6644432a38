"""Summaries of a counterfactual grid: tables, the accuracy-vs-k plot, and the pruned source.

Confidence intervals are two-sided 95% Student-t intervals over seeds. Differences from
the full source are paired by seed (seed ``s`` trains every point with one training seed).
The pruned source is chosen on target *validation* accuracy only; test accuracy is
reported for the choice, never used to make it.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Metric
from scipy import stats

from .counterfactual import FULL, ORDERS, CounterfactualRuns

TABLE_ARTIFACT = "counterfactual_runs.csv"
SUMMARY_ARTIFACT = "counterfactual_summary.csv"
PLOT_ARTIFACT = "counterfactual_accuracy.png"
SELECTION_ARTIFACT = "selection.json"
CANDIDATE_ORDERS = ("bottom",)  # pruning candidates: removing detrimental classes; top and random are controls


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)`` of a Student-t interval; low/high are NaN with fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else np.nan
    if len(x) < 2:
        return mean, np.nan, np.nan
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return mean, mean - half, mean + half


def paired_differences(table: pd.DataFrame, order: str, k: int, metric: str = "target_test_acc") -> np.ndarray:
    """``metric`` of (order, k) minus that of the full source, per seed present in both ``(n_seeds,)``."""
    point = table[(table.order == order) & (table.k == k)].set_index("seed")[metric]
    full = table[table.order == FULL].set_index("seed")[metric]
    seeds = point.index.intersection(full.index)
    return (point[seeds] - full[seeds]).to_numpy(float)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (order, k): mean and CI of val and test accuracy, and the paired test
    difference from the full source (positive = removing the classes raised test accuracy)."""
    rows = []
    for (order, k), group in table.groupby(["order", "k"], sort=False):
        row = {"order": order, "k": int(k), "n_seeds": len(group)}
        for metric, short in (("target_val_acc", "val"), ("target_test_acc", "test")):
            row[f"{short}_mean"], row[f"{short}_ci_low"], row[f"{short}_ci_high"] = t_interval(group[metric])
        row["test_std"] = float(group["target_test_acc"].std(ddof=1)) if len(group) > 1 else np.nan
        row["test_diff"], row["diff_ci_low"], row["diff_ci_high"] = t_interval(paired_differences(table, order, k))
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class Selection:
    """The pruned source chosen on validation accuracy, with its test figures.

    Accuracies are means over seeds; ``test_diff`` (and its CI) is the paired mean over
    seeds of (chosen - full source) test accuracy. ``model_run_id`` is the chosen setting's
    run with the best validation accuracy, ``full_run_id`` likewise for the full source.
    """

    order: str
    k: int
    removed: list[str]
    n_seeds: int
    val_acc: float
    test_acc: float
    full_val_acc: float
    full_test_acc: float
    test_diff: float
    diff_ci_low: float
    diff_ci_high: float
    beats_full: bool  # mean validation accuracy strictly above the full source's
    model_run_id: str
    full_run_id: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=float)

    @classmethod
    def from_json(cls, text: str) -> "Selection":
        return cls(**json.loads(text))

    def describe(self) -> str:
        ci = f"[{self.diff_ci_low:+.4f}, {self.diff_ci_high:+.4f}]"
        if self.k == 0:
            return (f"no pruned source beat the full source on validation; full source: val "
                    f"{self.full_val_acc:.4f}, test {self.full_test_acc:.4f} ({self.n_seeds} seeds)")
        return (f"pruned source: remove the {self.k} {self.order} classes; val {self.val_acc:.4f} vs full "
                f"{self.full_val_acc:.4f}; test {self.test_acc:.4f} vs full {self.full_test_acc:.4f}, "
                f"difference {self.test_diff:+.4f} (95% CI over {self.n_seeds} seeds {ci})")


def select(table: pd.DataFrame) -> Selection:
    """Choose the removal set with the highest mean *validation* accuracy.

    Candidates are the full source and every (bottom, k > 0) point: a pruned source removes
    the classes the analysis found detrimental, one fixed set across seeds. Top and random
    removals are controls, never candidates. Ties go to the smaller k (the full source wins).
    """
    summary = summarize(table)
    candidates = summary[(summary.order == FULL) | summary.order.isin(CANDIDATE_ORDERS)]
    rank = {o: i for i, o in enumerate((FULL, *ORDERS))}
    best = min(candidates.itertuples(), key=lambda r: (-r.val_mean, r.k, rank[r.order]))
    full = summary[summary.order == FULL].iloc[0]
    runs = table[(table.order == best.order) & (table.k == best.k)]
    full_runs = table[table.order == FULL]
    diff = paired_differences(table, best.order, best.k)
    mean, low, high = t_interval(diff)
    removed = runs.iloc[0]["removed"]
    return Selection(
        order=best.order, k=int(best.k), removed=removed.split(";") if removed else [], n_seeds=len(runs),
        val_acc=float(best.val_mean), test_acc=float(best.test_mean), full_val_acc=float(full.val_mean),
        full_test_acc=float(full.test_mean), test_diff=float(mean), diff_ci_low=float(low),
        diff_ci_high=float(high), beats_full=bool(best.k > 0 and best.val_mean > full.val_mean),
        model_run_id=str(runs.loc[runs.target_val_acc.idxmax(), "run_id"]),
        full_run_id=str(full_runs.loc[full_runs.target_val_acc.idxmax(), "run_id"]))


def plot_accuracy(summary: pd.DataFrame, path) -> None:
    """Target test accuracy against k for each order, with 95% CI bands; k = 0 is shared."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = summary[summary.order == FULL]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = {"bottom": "tab:green", "top": "tab:red", "random": "tab:gray"}
    labels = {"bottom": "remove most detrimental (bottom)", "top": "remove most helpful (top)",
              "random": "remove random"}
    for order in ORDERS:
        part = pd.concat([full, summary[summary.order == order]]).sort_values("k")
        if len(part) <= len(full):
            continue
        ax.plot(part.k, part.test_mean, "o-", color=colours[order], label=labels[order])
        ax.fill_between(part.k, part.test_ci_low, part.test_ci_high, color=colours[order], alpha=0.15)
    ax.axhline(float(full.test_mean.iloc[0]), color="black", lw=0.8, ls="--", label="full source")
    ax.set_xlabel("k = number of source classes removed")
    ax.set_ylabel("target test accuracy")
    ax.set_title(f"Counterfactual retraining (mean, 95% CI over {int(full.n_seeds.iloc[0])} seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_report(client, runs: CounterfactualRuns, finish: bool = True) -> Selection:
    """Write the tables, plot and selection to the parent run; end it FINISHED if ``finish``."""
    summary = summarize(runs.table)
    selection = select(runs.table)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs.table.to_csv(tmp / TABLE_ARTIFACT, index=False)
        summary.to_csv(tmp / SUMMARY_ARTIFACT, index=False)
        plot_accuracy(summary, tmp / PLOT_ARTIFACT)
        (tmp / SELECTION_ARTIFACT).write_text(selection.to_json())
        client.log_artifacts(runs.parent_run_id, str(tmp))
    values = {"selected_k": selection.k, "selected_val_acc": selection.val_acc,
              "selected_test_acc": selection.test_acc, "full_val_acc": selection.full_val_acc,
              "full_test_acc": selection.full_test_acc, "test_diff": selection.test_diff,
              "test_diff_ci_low": selection.diff_ci_low, "test_diff_ci_high": selection.diff_ci_high}
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if np.isfinite(v)]
    client.log_batch(runs.parent_run_id, metrics=metrics)
    client.set_tag(runs.parent_run_id, "selection", selection.describe()[:4900])
    if finish:
        client.set_terminated(runs.parent_run_id, status="FINISHED")
    return selection
