"""The ``counterfactual`` step: from an analysis run to a finished, reported grid.

Resolves the analysis run (latest FINISHED when not given), its class ranking and the
config its sweep was trained with, runs the grid of :mod:`transfer_core.counterfactual`
and logs the report of :mod:`transfer_core.counterfactual_report` on the parent run.
"""
from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from .analysis import ANALYSIS_KIND, class_ranking, get_analysis_run
from .config import ConfigError, RunConfig, build_config, with_overrides
from .counterfactual import CounterfactualPlan, CounterfactualRuns, quote, run_counterfactual
from .counterfactual_report import Selection, log_report
from .tracking import KIND_TAG, get_experiment_id, run_config


def find_analysis_run(client: MlflowClient, experiment_id: str, run_id: str | None = None):
    """The analysis run ``run_id``, or the latest FINISHED analysis run of the experiment."""
    if run_id:
        run = get_analysis_run(client, run_id)
        if run.info.status != "FINISHED":
            raise ConfigError(f"analysis run {run_id} is {run.info.status}, not FINISHED; rerun `analyze`")
        return run
    found = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                               filter_string=f"tags.`{KIND_TAG}` = '{ANALYSIS_KIND}' and "
                                             "attributes.status = 'FINISHED'")
    if not found:
        raise ConfigError("the experiment has no FINISHED analysis run; run `transfer-core analyze` first "
                          "or pass --analysis RUN_ID")
    return found[0]


def sweep_config(client: MlflowClient, experiment_id: str, sweep_id: str) -> RunConfig:
    """The config the FINISHED runs of sweep ``sweep_id`` were trained with."""
    found = client.search_runs([experiment_id], max_results=1,
                               filter_string=f"tags.sweep_id = {quote(sweep_id)} and tags.`{KIND_TAG}` = "
                                             "'subset_run' and attributes.status = 'FINISHED'")
    if not found:
        raise ConfigError(f"sweep {sweep_id!r} has no FINISHED subset run in this experiment; "
                          "run or resume the sweep first")
    return run_config(found[0])


@dataclass
class CounterfactualOutcome:
    runs: CounterfactualRuns
    selection: Selection
    analysis_run_id: str
    sweep_id: str


def counterfactual_from_analysis(experiment: str, plan: CounterfactualPlan, *, analysis_run_id: str | None = None,
                                 profile: str | None = None, overrides: dict | None = None, data_root=None,
                                 parent_run_id: str | None = None, workers: int = 1,
                                 progress: bool = True) -> CounterfactualOutcome:
    """Run (or resume) the counterfactual grid of an analysis run and report it.

    The models are trained with the config of the analysed sweep (so the check uses the
    recipe the influences were fitted on), or with ``profile`` when given; ``overrides``
    (dotted fields, e.g. tuned transfer values) apply on top.
    """
    from .runner import SubsetRunner
    client = MlflowClient()
    experiment_id = get_experiment_id(experiment)
    analysis = find_analysis_run(client, experiment_id, analysis_run_id)
    sweep_id = analysis.data.tags.get("sweep_id", "")
    if profile:
        config = build_config(profile, overrides)
    elif sweep_id:
        config = with_overrides(sweep_config(client, experiment_id, sweep_id), overrides or {}).validate()
    else:
        raise ConfigError(f"analysis run {analysis.info.run_id} names no sweep_id, so its recipe is unknown; "
                          "pass --profile")
    runner = SubsetRunner(config, experiment, data_root)
    runs = run_counterfactual(runner, class_ranking(analysis.info.run_id), plan, analysis_run_id=analysis.info.run_id,
                              source_sweep_id=sweep_id, parent_run_id=parent_run_id, workers=workers,
                              data_root=data_root, progress=progress)
    selection = log_report(client, runs)
    return CounterfactualOutcome(runs, selection, analysis.info.run_id, sweep_id)
