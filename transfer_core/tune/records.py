"""MLflow records of a tuning study: one parent run per ``tune`` call, one child run per trial.

Written by hand (Optuna's ``MLflowCallback`` is deprecated). Layout:
  parent  tags ``transfer_core.kind`` = tune, ``optuna.study_name``, ``config_hash``;
          params: the base config, ``tune.*`` settings, ``space.*`` domains, ``best.*``;
          metrics ``best_val_acc``, ``default_val_acc``, ``n_complete``/``n_pruned``/``n_failed``;
          artifacts ``backbone.pt``, ``best_params.json`` ({"transfer.lr": "0.05", ...}),
          ``trials.csv``, ``optimization_history.png``, ``param_importances.png``.
  child   tags ``transfer_core.kind`` = tune_trial, ``optuna.trial_number``, ``optuna.state``
          (COMPLETE / PRUNED / FAIL), ``optuna.stop_reason``; params: the trial's full config;
          metrics ``val_acc`` and ``train_loss`` per epoch (step = epoch), final ``target_val_acc``.
          Run status: COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib
import optuna
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from transfer_core.config import ConfigError, RunConfig, with_overrides
from transfer_core.track.runs import KIND_TAG, TUNE_TRIAL, metric_value

log = logging.getLogger(__name__)

STUDY_TAG = "optuna.study_name"
TRIAL_TAG = "optuna.trial_number"
STATE_TAG = "optuna.state"
REASON_TAG = "optuna.stop_reason"
BACKBONE_ARTIFACT = "backbone.pt"
BEST_PARAMS_ARTIFACT = "best_params.json"
TRIALS_ARTIFACT = "trials.csv"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def _now() -> int:
    return int(time.time() * 1000)


class TrialRecorder:
    """The child run of one trial: params at the start, per-epoch metrics, state at the end.

    Per-epoch metrics are buffered and written in one batch when the trial ends, so a trial
    costs three store round trips however many epochs it runs.
    """

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str, study_name: str,
                 trial_number: int, config: RunConfig):
        self.client = client
        tags = {KIND_TAG: TUNE_TRIAL, STUDY_TAG: study_name, TRIAL_TAG: str(trial_number),
                MLFLOW_PARENT_RUN_ID: parent_run_id, MLFLOW_RUN_NAME: f"{study_name}-trial-{trial_number:04d}"}
        self.run_id = client.create_run(experiment_id, tags=tags).info.run_id
        params = {**config.to_params(), "trial_number": str(trial_number)}
        client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        self.metrics: list[Metric] = []

    def epoch(self, epoch: int, loss: float, val_acc: float) -> None:
        now = _now()
        self.metrics += [Metric("train_loss", metric_value(loss), now, epoch),
                         Metric("val_acc", metric_value(val_acc), now, epoch)]

    def finish(self, state: str, value: float | None = None, reason: str | None = None) -> None:
        if value is not None:
            self.metrics.append(Metric("target_val_acc", metric_value(value), _now(), 0))
        tags = [RunTag(STATE_TAG, state)] + ([RunTag(REASON_TAG, reason[:4000])] if reason else [])
        self.client.log_batch(self.run_id, metrics=self.metrics, tags=tags)
        self.client.set_terminated(self.run_id, status=RUN_STATUS[state])


def best_params(study: optuna.Study, base: RunConfig) -> dict[str, str]:
    """The best trial's values as ``{dotted field: string}``, formatted as config params are.

    Includes ``transfer.mode``, so that a recipe is never applied to the other mode by accident.
    """
    chosen = study.best_trial.params
    params = with_overrides(base, chosen).to_params()
    return {key: params[key] for key in ["transfer.mode", *sorted(chosen)]}


def _save_plots(study: optuna.Study, folder: Path) -> dict[str, str]:
    """Optimisation history and parameter importances as PNGs; returns {plot: why skipped}."""
    matplotlib.use("Agg", force=False)  # headless: these plots only go to files
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as oplt

    skipped = {}
    plots = {HISTORY_PLOT: lambda: oplt.plot_optimization_history(study, target_name="target_val_acc"),
             IMPORTANCE_PLOT: lambda: oplt.plot_param_importances(
                 study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))}
    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's matplotlib plots are "experimental"
                ax = draw()
            figure = ax.figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(folder / name, dpi=100)
            plt.close(figure)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. too few complete trials
            skipped[name] = f"{type(exc).__name__}: {exc}"
            log.warning("skipped %s: %s", name, exc)
    return skipped


def log_study_summary(client: MlflowClient, run_id: str, study: optuna.Study, base: RunConfig) -> dict[str, str]:
    """Log the table of all trials, the plots and the best params on the parent run.

    Covers every trial in the study, including earlier calls' and other processes'. Returns
    the best params; raises ConfigError (after logging the table) if no trial completed.
    """
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    counts = {f"n_{s.lower()}": states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    metrics = {**counts, "n_trials": len(trials)}
    baseline = [t for t in trials if t.user_attrs.get("baseline") and t.state.name == "COMPLETE"]
    if baseline:
        metrics["default_val_acc"] = baseline[0].value
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study.trials_dataframe().to_csv(folder / TRIALS_ARTIFACT, index=False)
        skipped = _save_plots(study, folder)
        best = None
        if counts["n_complete"]:
            best = best_params(study, base)
            metrics["best_val_acc"] = study.best_value
            metrics["best_trial"] = study.best_trial.number
            (folder / BEST_PARAMS_ARTIFACT).write_text(json.dumps(best, indent=2, sort_keys=True))
        client.log_artifacts(run_id, str(folder))
    now = _now()
    client.log_batch(run_id, metrics=[Metric(k, metric_value(v), now, 0) for k, v in metrics.items()],
                     params=[Param(f"best.{k}", v) for k, v in (best or {}).items()],
                     tags=[RunTag(f"plot_skipped.{k}", v[:4000]) for k, v in skipped.items()])
    if best is None:
        raise ConfigError(f"no trial of study {study.study_name!r} completed ({counts['n_pruned']} pruned, "
                          f"{counts['n_fail']} failed; reasons in trials.csv of run {run_id}); "
                          "narrow the search space, e.g. lower the learning-rate range")
    return best
