"""Every influence estimate of one sweep, from stacked masks and outputs: pure numpy and pandas.

Sign convention everywhere: positive influence = including the source class helps the target.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from transfer_core.analysis import findings, influence
from transfer_core.config import ConfigError

OUTPUTS = ("margin", "prob", "correct")


@dataclass(frozen=True)
class AnalysisOptions:
    """How to analyse a sweep; validated at construction."""

    output: str = "margin"  # the per-example output influences are fitted to: margin | prob | correct
    bootstrap: int = 100  # resamples of the runs for intervals; 0 = normal intervals from Welch errors
    min_runs: int = 5  # each class must be kept in, and left out of, at least this many runs
    confidence: float = 0.95  # of every interval
    top_k: int = 10  # length of the ranked lists of most helpful and most detrimental classes
    seed: int = 0  # of the bootstrap, the split halves and the datamodel's held-out runs
    leak_min_z: float = 3.0  # a leakage candidate's top class is this many standard errors above zero ...
    leak_dominance: float = 2.0  # ... and this many times the runner-up class
    max_candidates: int = 50  # leakage candidates checked by nearest neighbours
    duplicate_threshold: float = 0.99  # thumbnail cosine from which a pair counts as a near duplicate
    duplicate_resolution: int = 32  # pixels a side at which target test and source train are compared
    max_grid_classes: int = 20  # target classes that get an image grid
    feature_neighbours: bool = True  # also check leakage candidates in a backbone's feature space

    def __post_init__(self):
        checks = [
            (self.output in OUTPUTS, f"unknown output {self.output!r}; choose one of {', '.join(OUTPUTS)}"),
            (self.bootstrap == 0 or self.bootstrap >= 20,
             f"--bootstrap must be 0 (normal intervals) or at least 20 resamples, got {self.bootstrap}"),
            (self.min_runs >= 2, f"--min-runs must be at least 2 (a variance needs two runs), got {self.min_runs}"),
            (0.5 < self.confidence < 1, f"confidence must be in (0.5, 1), got {self.confidence}"),
            (self.top_k >= 1, f"top_k must be positive, got {self.top_k}"),
            (0 < self.duplicate_threshold <= 1, "duplicate_threshold must be in (0, 1]"),
            (self.duplicate_resolution >= 8, "duplicate_resolution must be at least 8 pixels"),
            (self.max_candidates >= 0 and self.max_grid_classes >= 0, "limits must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass
class Estimates:
    """Influences of one sweep. Per example ``(n_targets, n_classes)``; aggregates as a long table."""

    output: str
    influence: np.ndarray  # difference of means, float32
    std_error: np.ndarray  # Welch
    bootstrap_se: np.ndarray | None  # over resampled runs; None without bootstrap
    aggregates: pd.DataFrame  # see findings.aggregate_table; scopes "(all)" and each target class
    stability: pd.DataFrame  # n_runs_per_half, spearman_mean, spearman_std
    ridge: influence.Ridge  # the datamodel of the chosen output
    datamodel: pd.DataFrame  # class_index, class_name, difference_of_means, ridge (whole target)
    # The ranking that chooses classes to remove, fitted on the ranking half of the validation
    # split (never on test): rows as class_influence.csv; None when the runs recorded no validation.
    selection: pd.DataFrame | None = None
    selection_stability: pd.DataFrame | None = None  # its split-half curve, like ``stability``
    n_selection_targets: int = 0  # validation examples the selection ranking was fitted on


def whole_target_ranking(masks: np.ndarray, outputs: np.ndarray, class_names: list[str], options: AnalysisOptions,
                         weights: np.ndarray | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Class influence on the mean of ``outputs (n_models, n_targets)`` over all targets, best first,
    with its intervals (``weights``: bootstrap resampling counts, or None for Welch intervals), and the
    split-half stability of that ranking."""
    means = influence.group_means(outputs, np.ones((outputs.shape[1], 1), bool))
    est = influence.difference_of_means(masks, means)
    draws = influence.bootstrap_draws(masks, means, weights) if weights is not None else None
    table = findings.aggregate_table(options.output, [findings.ALL], class_names, est.influence, est.std_error,
                                     draws, options.confidence)
    curve = influence.split_half_stability(masks, means, seed=options.seed)
    stability = pd.DataFrame({"n_runs_per_half": curve["n_runs"], "spearman_mean": curve["spearman_mean"],
                              "spearman_std": curve["spearman_std"]})
    return findings.class_influence(table, options.output), stability


def target_groups(labels: np.ndarray, n_target_classes: int) -> np.ndarray:
    """``(n_targets, 1 + n_target_classes)`` bool: the whole target, then each target class."""
    return np.concatenate([np.ones((len(labels), 1), bool), labels[:, None] == np.arange(n_target_classes)], 1)


def estimate(masks: np.ndarray, outputs: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str],
             target_names: list[str], options: AnalysisOptions, val_outputs: dict[str, np.ndarray] | None = None,
             ranking_half: np.ndarray | None = None) -> Estimates:
    """All influence estimates of one sweep, from ``CollectedRuns``-shaped arrays.

    ``masks`` ``(n_models, n_classes)`` bool; ``outputs[name]`` ``(n_models, n_targets)`` on the
    test split; ``labels`` ``(n_targets,)`` target classes. Aggregates cover the chosen output
    and, when that is not ``correct``, accuracy too. With ``val_outputs[name]`` ``(n_models,
    n_val)`` and ``ranking_half`` ``(n_val,)`` bool, the selection ranking is fitted on the
    validation examples of the ranking half only.
    """
    chosen = outputs[options.output]
    per_example = influence.difference_of_means(masks, chosen)
    weights = influence.bootstrap_weights(len(masks), options.bootstrap, options.seed) if options.bootstrap else None
    boot_se = influence.bootstrap_std_error(masks, chosen, weights=weights) if weights is not None else None
    groups = target_groups(labels, len(target_names))
    scopes = [findings.ALL, *target_names]
    tables = []
    for name in dict.fromkeys([options.output, "correct"]):
        means = influence.group_means(outputs[name], groups)
        est = influence.difference_of_means(masks, means)
        draws = influence.bootstrap_draws(masks, means, weights) if weights is not None else None
        tables.append(findings.aggregate_table(name, scopes, class_names, est.influence, est.std_error, draws,
                                               options.confidence))
    whole = influence.group_means(chosen, groups[:, :1])
    curve = influence.split_half_stability(masks, whole, seed=options.seed)
    stability = pd.DataFrame({"n_runs_per_half": curve["n_runs"], "spearman_mean": curve["spearman_mean"],
                              "spearman_std": curve["spearman_std"]})
    ridge = influence.ridge_datamodel(masks, chosen, seed=options.seed)
    datamodel = pd.DataFrame({"class_index": np.arange(len(class_names)), "class_name": class_names,
                              "difference_of_means": per_example.influence.mean(0), "ridge": ridge.coef.mean(0)})
    selection = selection_stability = None
    n_selection = 0
    if val_outputs is not None and ranking_half is not None:
        fitted_on = val_outputs[options.output][:, np.asarray(ranking_half, bool)]
        selection, selection_stability = whole_target_ranking(masks, fitted_on, class_names, options, weights)
        n_selection = fitted_on.shape[1]
    return Estimates(options.output, per_example.influence, per_example.std_error, boot_se,
                     pd.concat(tables, ignore_index=True), stability, ridge, datamodel, selection,
                     selection_stability, n_selection)
