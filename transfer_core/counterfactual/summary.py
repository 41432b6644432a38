"""Summaries of a counterfactual grid, as pure computation: intervals over seeds, and the pruned source.

Confidence intervals are two-sided 95% Student-t intervals over seeds. Differences from
the full source are paired by seed (seed ``s`` trains every point with one training seed).
The pruned source is chosen on target *validation* accuracy only; test accuracy is
reported for the choice, never used to make it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from transfer_core.counterfactual.grid import FULL, ORDERS
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
