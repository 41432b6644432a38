"""Summaries of a counterfactual grid, as pure computation: intervals over seeds, and the champion.

Confidence intervals are two-sided Student-t intervals over seeds. Differences from the full
source are paired by seed (seed ``s`` trains every point with one training seed). Where only
one end of an interval decides (the gate: its lower end), the test is one-sided at half the
interval's two-sided error, and the text says so.

Who decides what, so that nothing is scored on the examples it was chosen on:
- the *ranking half* of the validation split ranked the classes (in the analysis);
- the *selection half* (``select_acc``: each run's accuracy on it) chooses k among the
  pruned sources and must show the gain: a pruned source is the champion only when its
  paired selection-half gain over the full source has a confidence interval above zero, over
  at least ``min_seeds`` seeds fixed in the plan, at the level the plan's *look* may spend;
- the test split only scores the choice (``test_diff``), and chooses nothing.

**Every look counts** (champion rule version :data:`RULE_VERSION`). Every plan whose results were
shown on a selection half is a look at it, numbered in the order they were first shown, in the
look ledger (:mod:`~transfer_core.counterfactual.looks`), which no store operation resets. Look
``j`` may spend ``alpha / 2**j`` of the family-wise error ``alpha = 1 - confidence`` (half, then
a quarter, ...), split evenly over its candidates (Bonferroni), so however many plans look at
one half (more seeds, other ks, another analysis of the same data), the chance that any of them
makes a false champion stays below ``alpha``. ``alpha`` is the two-sided error of the intervals;
only their lower end decides, so the one-sided chance of a false champion is at most ``alpha / 2``.

The claims a report makes about the controls (:func:`contrasts`) are paired tests too: top -
random, bottom - random, bottom - top and each order minus the full source, per k, all of them
one family: Bonferroni over every (contrast, k) the grid tests.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from transfer_core.config import ConfigError
from transfer_core.counterfactual.settings import FULL, EvidenceRule

RULE_VERSION = 3  # 2: looks on a selection half share the error rate, seeds fixed per plan; 3: looks counted in the
# look ledger, keyed by the selection half's images (not the store, not the resolution); outputs checked
CANDIDATE_ORDERS = ("bottom",)  # pruning candidates: removing detrimental classes; top and random are controls
SELECT_METRIC = "select_acc"  # accuracy on the selection half of the validation split


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)`` of a Student-t interval; low/high are NaN with fewer than 2 values."""
    from scipy import stats  # here, not at import: the command line reads this module's defaults

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
    """One row per (order, k): mean and CI of validation, selection-half and test accuracy, and the
    paired differences from the full source (positive = removing the classes raised accuracy)."""
    metrics = [("target_val_acc", "val"), (SELECT_METRIC, "select"), ("target_test_acc", "test")]
    metrics = [(m, short) for m, short in metrics if m in table]
    rows = []
    for (order, k), group in table.groupby(["order", "k"], sort=False):
        row = {"order": order, "k": int(k), "n_seeds": len(group)}
        for metric, short in metrics:
            row[f"{short}_mean"], row[f"{short}_ci_low"], row[f"{short}_ci_high"] = t_interval(group[metric])
        row["test_std"] = float(group["target_test_acc"].std(ddof=1)) if len(group) > 1 else np.nan
        if SELECT_METRIC in table:
            row["select_diff"], row["select_diff_ci_low"], row["select_diff_ci_high"] = t_interval(
                paired_differences(table, order, k, SELECT_METRIC))
        row["test_diff"], row["diff_ci_low"], row["diff_ci_high"] = t_interval(paired_differences(table, order, k))
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class Selection:
    """The pruned source chosen on the selection half of validation, the evidence for it, and its test figures.

    Accuracies are means over seeds. ``select_diff`` (and its CI, at ``level``) is the paired
    mean over seeds of (chosen - full source) selection-half accuracy; ``test_diff`` likewise on
    test, reported only. ``is_champion`` is True when the pruned source earned the champion
    alias (see the module docstring); ``reason`` says why, or why not, in one sentence.
    ``model_run_id`` is the chosen setting's run with the best selection-half accuracy,
    ``full_run_id`` likewise for the full source.
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
    is_champion: bool
    model_run_id: str
    full_run_id: str
    select_acc: float = np.nan
    full_select_acc: float = np.nan
    select_diff: float = np.nan
    select_diff_ci_low: float = np.nan
    select_diff_ci_high: float = np.nan
    level: float = 0.95
    n_candidates: int = 0
    reason: str = ""
    ranking_split_half: float = np.nan  # split-half Spearman of the ranking that chose the removals
    rule_version: int = 0  # the champion rule that decided (RULE_VERSION); 0: written before looks were counted
    look: int = 0  # this plan's look at its selection half (1 = the first)
    look_alpha: float = np.nan  # the family-wise error this look may spend, shared by its candidates
    earlier_looks: list = field(default_factory=list)  # counterfactual run ids that looked at the half before
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=float)

    @classmethod
    def from_json(cls, text: str) -> "Selection":
        """Read a ``selection.json``; one written by an older rule reads with ``rule_version`` 0 and no champion."""
        values = json.loads(text)
        if "beats_full" in values:  # written before champions needed evidence: never a champion now
            values.pop("beats_full")
            values["is_champion"] = False
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})

    def describe(self) -> str:
        test = (f"test {self.test_acc:.4f} vs full {self.full_test_acc:.4f}, difference {self.test_diff:+.4f} "
                f"(two-sided 95% CI [{self.diff_ci_low:+.4f}, {self.diff_ci_high:+.4f}], {self.n_seeds} seeds, "
                "reported only)")
        if self.k == 0:
            return f"{self.reason}; full source: val {self.full_val_acc:.4f}, test {self.full_test_acc:.4f}"
        return f"{self.reason}; the candidate's {test}"  # the reason names it (the k most detrimental classes)


def select(table: pd.DataFrame, rule: EvidenceRule = EvidenceRule(), look: int = 1,
           earlier_looks: list[str] | tuple = ()) -> Selection:
    """Choose k on the selection half of validation, and make the pruned source champion only on evidence.

    ``table`` has one row per run: order, k, seed, run_id, removed, target_val_acc,
    target_test_acc and ``select_acc``. Candidates are every (bottom, k > 0) point; top and
    random removals are controls. The candidate with the highest mean ``select_acc`` is chosen
    (ties to the smaller k). It becomes champion when its paired ``select_acc`` gain over the
    full source, over at least ``rule.min_seeds`` seeds, has a t-interval above zero at level
    ``1 - rule.look_alpha(look) / n_candidates``, ``look`` being this plan's look at the
    selection half (``earlier_looks``: the plans that looked before); otherwise the full source is champion.
    """
    if SELECT_METRIC not in table:
        raise ConfigError("the grid's runs have no selection-half accuracy; rerun the counterfactual with this "
                          "version (it scores each run on the validation half the ranking did not see)")
    summary = summarize(table)
    full = summary[summary.order == FULL].iloc[0]
    full_runs = table[table.order == FULL]
    candidates = summary[summary.order.isin(CANDIDATE_ORDERS) & (summary.k > 0)]
    n_seeds = int(full.n_seeds)
    alpha = rule.look_alpha(look)
    level = 1 - alpha / max(1, len(candidates))
    common = dict(full_val_acc=float(full.val_mean), full_test_acc=float(full.test_mean),
                  full_select_acc=float(full.select_mean), level=level, n_candidates=len(candidates),
                  full_run_id=str(full_runs.loc[full_runs[SELECT_METRIC].idxmax(), "run_id"]),
                  rule_version=RULE_VERSION, look=look, look_alpha=alpha, earlier_looks=list(earlier_looks))
    spent = (f"look {look} at this selection half, which may spend {alpha:.2%} of the {1 - rule.confidence:.0%} "
             f"two-sided error rate, Bonferroni over {len(candidates)} candidate{'s' if len(candidates) != 1 else ''}; "
             f"only the lower end decides, so this look's one-sided error is at most {alpha / 2:.2%}")
    if candidates.empty:
        return Selection(FULL, 0, [], n_seeds, float(full.val_mean), float(full.test_mean), test_diff=0.0,
                         diff_ci_low=np.nan, diff_ci_high=np.nan, is_champion=False,
                         model_run_id=common["full_run_id"], select_acc=float(full.select_mean),
                         reason="the grid has no pruned candidate (no bottom k > 0), so the full source is champion",
                         **common)
    best = min(candidates.itertuples(), key=lambda r: (-r.select_mean, r.k))
    runs = table[(table.order == best.order) & (table.k == best.k)]
    gain = paired_differences(table, best.order, best.k, SELECT_METRIC)
    mean, low, high = t_interval(gain, level)
    test_mean, test_low, test_high = t_interval(paired_differences(table, best.order, best.k))
    if len(gain) < rule.min_seeds:
        evidence, reason = False, (f"{len(gain)} seeds are too few for the evidence a champion needs (at least "
                                   f"{rule.min_seeds}), so the full source is champion")
    elif low > 0:
        evidence, reason = True, (f"the pruned source is champion: removing the {best.k} most detrimental classes "
                                  f"raised selection-half validation accuracy by {mean:+.4f} (two-sided {level:.2%} CI "
                                  f"[{low:+.4f}, {high:+.4f}] over {len(gain)} seeds; {spent})")
    else:
        evidence, reason = False, (f"the best pruned source (remove the {best.k} most detrimental classes) did not "
                                   f"beat the full source on the held-out validation half: gain {mean:+.4f}, "
                                   f"two-sided {level:.2%} CI [{low:+.4f}, {high:+.4f}] over {len(gain)} seeds "
                                   "includes zero "
                                   f"({spent}), so the full source is champion")
    removed = runs.iloc[0]["removed"]
    return Selection(
        order=best.order, k=int(best.k), removed=removed.split(";") if isinstance(removed, str) and removed else [],
        n_seeds=len(runs), val_acc=float(best.val_mean), test_acc=float(best.test_mean),
        test_diff=float(test_mean), diff_ci_low=float(test_low), diff_ci_high=float(test_high), is_champion=evidence,
        model_run_id=str(runs.loc[runs[SELECT_METRIC].idxmax(), "run_id"]), select_acc=float(best.select_mean),
        select_diff=float(mean), select_diff_ci_low=float(low), select_diff_ci_high=float(high), reason=reason,
        **common)


CONTRASTS = (  # (name, minuend order, subtrahend order, what an interval away from zero would show)
    ("top - random", "top", "random", "removing the most helpful classes costs more than removing random ones"),
    ("bottom - random", "bottom", "random",
     "removing the most detrimental classes helps more than removing random ones"),
    ("bottom - top", "bottom", "top", "the ranking separates helpful from detrimental classes"),
    ("bottom - full", "bottom", FULL, "removing the most detrimental classes changes accuracy"),
    ("top - full", "top", FULL, "removing the most helpful classes changes accuracy"),
    ("random - full", "random", FULL, "removing random classes changes accuracy"),
)


def paired_contrast(table: pd.DataFrame, first: str, second: str, k: int, metric: str) -> np.ndarray:
    """``metric`` of (first, k) minus that of (second, k) per seed present in both ``(n_seeds,)``; FULL is k = 0."""
    def values(order):
        rows = table[(table.order == FULL)] if order == FULL else table[(table.order == order) & (table.k == k)]
        return rows.set_index("seed")[metric]
    a, b = values(first), values(second)
    seeds = a.index.intersection(b.index)
    return (a[seeds] - b[seeds]).to_numpy(float)


def contrasts(table: pd.DataFrame, metric: str = "target_test_acc", confidence: float = 0.95) -> pd.DataFrame:
    """Paired tests of the controls, one row per (contrast, k > 0) whose orders the grid has.

    Columns: ``contrast``, ``k``, ``n_seeds``, ``mean``, ``ci_low``, ``ci_high``, ``level``,
    ``family`` and ``sign`` (+1 / -1 when the interval lies above / below zero, else 0). Every row
    is one test of one family, Bonferroni-corrected over all of them: ``family`` = the number of
    rows, ``level = 1 - (1 - confidence) / family``, two-sided (a claim of one direction holds when
    its interval lies on that side of zero: a one-sided test at ``(1 - level) / 2``). Differences are
    paired by seed, so an interval away from zero needs a consistent difference, not just different means.
    """
    orders = set(table.order)
    ks = sorted(int(k) for k in set(table.k) if k > 0)
    tests = [(name, first, second, k) for name, first, second, _ in CONTRASTS
             if first in orders and second in orders for k in ks
             if (table[(table.order == first) & (table.k == k)].size or first == FULL)
             and (table[(table.order == second) & (table.k == k)].size or second == FULL)]
    level = 1 - (1 - confidence) / max(1, len(tests))
    rows = []
    for name, first, second, k in tests:
        diff = paired_contrast(table, first, second, k, metric)
        mean, low, high = t_interval(diff, level)
        sign = 1 if low > 0 else -1 if high < 0 else 0
        rows.append({"contrast": name, "k": k, "n_seeds": len(diff), "mean": mean, "ci_low": low,
                     "ci_high": high, "level": level, "family": len(tests), "sign": sign})
    return pd.DataFrame(rows, columns=["contrast", "k", "n_seeds", "mean", "ci_low", "ci_high", "level", "family",
                                       "sign"])
