"""Every influence estimate of one sweep, from stacked masks and outputs: pure numpy and pandas.

Sign convention everywhere: positive influence = including the source class helps the target.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from transfer_core.analysis import findings, influence
from transfer_core.analysis.settings import AnalysisSettings

@dataclass
class Estimates:
    """Influences of one sweep. Per example ``(n_targets, n_classes)``; aggregates as a long table."""

    output: str
    influence: np.ndarray  # the chosen estimator's, float32
    std_error: np.ndarray  # the estimator's own (Welch for dom; NaN where it has none)
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


def whole_target_ranking(masks: np.ndarray, outputs: np.ndarray, class_names: list[str], settings: AnalysisSettings,
                         weights: np.ndarray | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Class influence on the mean of ``outputs (n_models, n_targets)`` over all targets, best first,
    with its intervals (``weights``: bootstrap resampling counts, or None for normal intervals), and the
    split-half stability of that ranking; fitted by the settings' estimator."""
    estimator = influence.ESTIMATORS[settings.estimator]
    means = influence.group_means(outputs, np.ones((outputs.shape[1], 1), bool))
    est = estimator.fit(masks, means)
    draws = estimator.draws(masks, means, weights) if weights is not None else None
    table = findings.aggregate_table(settings.output, [findings.ALL], class_names, est.influence, est.std_error,
                                     draws, settings.confidence)
    return findings.class_influence(table, settings.output), _stability(masks, means, settings, estimator)


def _stability(masks, group_outputs, settings: AnalysisSettings, estimator) -> pd.DataFrame:
    curve = influence.split_half_stability(masks, group_outputs, seed=settings.seed, estimator=estimator)
    return pd.DataFrame({"n_runs_per_half": curve["n_runs"], "spearman_mean": curve["spearman_mean"],
                         "spearman_std": curve["spearman_std"]})


def target_groups(labels: np.ndarray, n_target_classes: int) -> np.ndarray:
    """``(n_targets, 1 + n_target_classes)`` bool: the whole target, then each target class."""
    return np.concatenate([np.ones((len(labels), 1), bool), labels[:, None] == np.arange(n_target_classes)], 1)


def estimate(masks: np.ndarray, outputs: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str],
             target_names: list[str], settings: AnalysisSettings, val_outputs: dict[str, np.ndarray] | None = None,
             ranking_half: np.ndarray | None = None) -> Estimates:
    """All influence estimates of one sweep, from ``CollectedRuns``-shaped arrays, by the estimator
    ``settings.estimator`` names in :data:`~transfer_core.analysis.influence.ESTIMATORS`.

    ``masks`` ``(n_models, n_classes)`` bool; ``outputs[name]`` ``(n_models, n_targets)`` on the
    test split; ``labels`` ``(n_targets,)`` target classes. Aggregates cover the chosen output
    and, when that is not ``correct``, accuracy too. With ``val_outputs[name]`` ``(n_models,
    n_val)`` and ``ranking_half`` ``(n_val,)`` bool, the selection ranking is fitted on the
    validation examples of the ranking half only. The ridge datamodel is fitted whatever the
    estimator: it is a finding of its own (its agreement with the difference of means).
    """
    estimator = influence.ESTIMATORS[settings.estimator]
    chosen = outputs[settings.output]
    per_example = estimator.fit(masks, chosen)
    weights = influence.bootstrap_weights(len(masks), settings.bootstrap, settings.seed) if settings.bootstrap else None
    boot_se = estimator.bootstrap_std_error(masks, chosen, weights) if weights is not None else None
    groups = target_groups(labels, len(target_names))
    scopes = [findings.ALL, *target_names]
    tables = []
    for name in dict.fromkeys([settings.output, "correct"]):
        means = influence.group_means(outputs[name], groups)
        est = estimator.fit(masks, means)
        draws = estimator.draws(masks, means, weights) if weights is not None else None
        tables.append(findings.aggregate_table(name, scopes, class_names, est.influence, est.std_error, draws,
                                               settings.confidence))
    stability = _stability(masks, influence.group_means(chosen, groups[:, :1]), settings, estimator)
    ridge = influence.ridge_datamodel(masks, chosen, seed=settings.seed)
    dom = per_example if settings.estimator == "dom" else influence.difference_of_means(masks, chosen)
    datamodel = pd.DataFrame({"class_index": np.arange(len(class_names)), "class_name": class_names,
                              "difference_of_means": dom.influence.mean(0), "ridge": ridge.coef.mean(0)})
    selection = selection_stability = None
    n_selection = 0
    if val_outputs is not None and ranking_half is not None:
        fitted_on = val_outputs[settings.output][:, np.asarray(ranking_half, bool)]
        selection, selection_stability = whole_target_ranking(masks, fitted_on, class_names, settings, weights)
        n_selection = fitted_on.shape[1]
    return Estimates(settings.output, per_example.influence, per_example.std_error, boot_se,
                     pd.concat(tables, ignore_index=True), stability, ridge, datamodel, selection,
                     selection_stability, n_selection)
