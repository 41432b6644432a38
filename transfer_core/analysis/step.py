"""The ``analyze`` step: class influences of one sweep, with uncertainty, as one MLflow run.

Reads every FINISHED run of a sweep (:func:`transfer_core.sweep.collect_sweep`), refuses
runs of different configs and too few runs per class, fits influences
(:mod:`~transfer_core.analysis.estimate`), and logs the findings
(:mod:`~transfer_core.analysis.writers`) as artifacts of an analysis run tagged
``transfer_core.kind=analysis``, ``sweep_id`` and ``sweep_parent_run_id``.

Sign convention everywhere: positive influence = including the source class helps the target.

Example::

    result = analyze("demo", settings=AnalysisSettings(output="correct", bootstrap=100), ctx=ctx)
    print(result.report_path)
    ranking = class_ranking(ctx.client, result.run_id)      # the validation ranking table
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from transfer_core.analysis import influence
from transfer_core.analysis.writers import RANKING_ARTIFACT, REPORT_ARTIFACT, SELECTION_ARTIFACT, write_artifacts
from transfer_core.analysis.settings import AnalysisSettings
from transfer_core.config import ConfigError, RunConfig, from_params
from transfer_core.data import DataDirs, load_transfer_data, validation_digests
from transfer_core.execute import Context
from transfer_core.sweep import collect_sweep, find_sweeps
from transfer_core.track import (KIND_TAG, artifact_path, describe_run, existing_experiment, get_run_of_kind,
                                 latest_run, log_metrics, log_new_params, run_filter, run_scope, search_all, set_tags)
from transfer_core.track.runs import ANALYSIS, SUBSET_RUN, SWEEP, find_run_of_kind
from transfer_core.track.steps import find_step, step_key, step_tags



def compatibility_fields() -> list[str]:
    """The run params that must agree across analysed runs: every config field, and the class count."""
    return [*RunConfig().to_params(), "subset.n_source_classes"]


def check_compatible(run_ids: list[str], run_params: list[dict[str, str]]) -> None:
    """Refuse runs that differ in source classes, target, transfer mode or recipe, naming them."""
    reference = run_params[0]
    clashes = []
    for run_id, params in zip(run_ids[1:], run_params[1:]):
        for key in compatibility_fields():
            if params.get(key) != reference.get(key):
                clashes.append(f"run {run_id} has {key}={params.get(key, '(unset)')} but run {run_ids[0]} has "
                               f"{reference.get(key, '(unset)')}")
    if clashes:
        more = f" (and {len(clashes) - 4} more differences)" if len(clashes) > 4 else ""
        raise ConfigError(f"the runs are incompatible and cannot be analysed together: {'; '.join(clashes[:4])}"
                          f"{more}; analyse runs of one config (one sweep) at a time")


@dataclass
class AnalysisResult:
    run_id: str
    sweep_id: str
    report_path: Path
    ranking: pd.DataFrame  # the class_influence.csv table
    reused: bool = False  # an earlier FINISHED analysis of the same runs with the same settings


def resolve_sweep(client: MlflowClient, experiment_id: str, experiment: str, sweep_id: str | None) -> str:
    """``sweep_id``, or the experiment's only sweep (by its parent run, else by its subset runs' tags)."""
    if sweep_id:
        return sweep_id
    sweeps = find_sweeps(client, experiment_id)
    if not sweeps:  # runs logged without a sweep parent, e.g. by SubsetRunner in a loop
        runs = search_all(client, [experiment_id], run_filter(SUBSET_RUN, "FINISHED"))
        sweeps = sorted({r.data.tags["sweep_id"] for r in runs if r.data.tags.get("sweep_id")})
    if len(sweeps) == 1:
        return sweeps[0]
    if not sweeps:
        raise ConfigError(f"experiment {experiment!r} has no sweep; run `transfer-core sweep` first or pass --sweep")
    raise ConfigError(f"experiment {experiment!r} has {len(sweeps)} sweeps ({', '.join(sweeps[:5])}); "
                      "choose one with --sweep")


def analysis_key(run_ids: list[str], settings: AnalysisSettings, validation: dict[str, str]) -> str:
    """What an analysis is a function of (its step key): the set of runs, the settings (seeds included),
    the validation split it ranks on, and the analysis code."""
    return step_key("analysis", upstream={"runs": sorted(run_ids)}, data=json.dumps(validation, sort_keys=True),
                    code="analysis", extra=asdict(settings))


def validation_record(config: RunConfig, val_labels: np.ndarray | None, dirs: DataDirs = DataDirs()) -> dict[str, str]:
    """Digests of the validation split the runs scored and of its two halves (tags of the analysis run).

    A later step that chooses on the selection half compares them with its own and refuses to go
    on when they differ (:func:`transfer_core.data.validation_digests`). Empty when the runs
    recorded no validation outputs.
    """
    if val_labels is None:
        return {}
    val = load_transfer_data(config.data, dirs).target_val
    if not np.array_equal(val.labels.numpy(), np.asarray(val_labels)):
        raise ConfigError("the validation split that this data root gives differs from the one the sweep's runs "
                          "scored; point --data-root at the data the sweep used")
    return validation_digests(val, config.data.split_seed)


def _result(client: MlflowClient, run_id: str, sweep_id: str, reused: bool = False) -> AnalysisResult:
    run = client.get_run(run_id)
    return AnalysisResult(run_id, sweep_id, artifact_path(run, REPORT_ARTIFACT, client),
                          pd.read_csv(artifact_path(run, RANKING_ARTIFACT, client)), reused)


def analyze(experiment: str, sweep_id: str | None = None, settings: AnalysisSettings = AnalysisSettings(), *,
            ctx: Context, device=None, run_id: str | None = None,
            recompute: bool = False) -> AnalysisResult:
    """Analyse the FINISHED runs of a sweep and log an analysis run; see the module docstring.

    ``run_id`` continues a RUNNING run made elsewhere (``mlflow run``); otherwise one is made,
    unless a FINISHED analysis with the same step key (the same runs, settings, validation split
    and analysis code) exists: that one is returned (``reused``), so steps keyed on the analysis
    run (counterfactuals) resume, unless ``recompute``. Bad input (incompatible runs, too few runs
    per class) raises before anything is logged.
    """
    client = ctx.client
    experiment_id = existing_experiment(client, experiment)
    sweep_id = resolve_sweep(client, experiment_id, experiment, sweep_id)
    runs = collect_sweep(sweep_id, experiment_id, ctx=ctx)
    check_compatible(runs.run_ids, runs.run_params)
    influence.check_coverage(runs.masks, runs.source_classes, settings.min_runs)
    config = from_params(runs.params)
    validation = validation_record(config, runs.val_labels, ctx.dirs)

    key = analysis_key(runs.run_ids, settings, validation)
    if run_id is None and not recompute:
        found = find_step(client, experiment_id, ANALYSIS, key)
        if found is not None:
            return _result(client, found.info.run_id, sweep_id, reused=True)
    parent = latest_run(client, experiment_id, SWEEP, status=None, sweep_id=sweep_id)
    tags = {KIND_TAG: ANALYSIS, "sweep_id": sweep_id, MLFLOW_RUN_NAME: f"analysis-{sweep_id}", **step_tags(key),
            "sweep_parent_run_id": parent.info.run_id if parent is not None else "", **validation}
    if run_id is None:
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
    else:
        set_tags(client, run_id, tags)
    with run_scope(client, run_id), tempfile.TemporaryDirectory() as tmp:
        timings = {}
        start = time.perf_counter()
        summary = write_artifacts(Path(tmp), sweep_id, runs, config, settings, ctx.dirs, device, timings,
                                  ctx.progress, client)
        timings["total_s"] = time.perf_counter() - start
        params = {f"analysis.{k}": str(v) for k, v in asdict(settings).items()}
        log_new_params(client, run_id, {**params, "analysis.n_runs": str(len(runs)), **config.to_params()})
        log_metrics(client, run_id, {**summary, **timings})
        client.log_artifacts(run_id, tmp)
    result = _result(client, run_id, sweep_id)
    describe_run(client, run_id, analysis_note(result, len(runs), settings))
    return result


def analysis_note(result: AnalysisResult, n_runs: int, settings: AnalysisSettings) -> str:
    """The analysis run's description in the MLflow UI: what was fitted, the headline, where to read on."""
    top, bottom = result.ranking.iloc[0], result.ranking.iloc[-1]
    return (f"Influences of the source classes on the target, fitted from {n_runs} FINISHED runs of sweep "
            f"`{result.sweep_id}` (output `{settings.output}`; positive = including the class helps). Most helpful: "
            f"{top.class_name} ({top.influence:+.4g}); most detrimental: {bottom.class_name} "
            f"({bottom.influence:+.4g}). Report: `{REPORT_ARTIFACT}` (Artifacts tab, previews here); ranking: "
            f"`{RANKING_ARTIFACT}`. Next: `transfer-core counterfactual --analysis {result.run_id}`.")


def get_analysis_run(client: MlflowClient, run_id: str, finished: bool = False):
    """The MLflow run ``run_id``, checked to be an analysis run (and FINISHED); ConfigError otherwise."""
    return get_run_of_kind(client, run_id, ANALYSIS, "transfer-core analyze", finished)


def find_analysis_run(client: MlflowClient, experiment_id: str, run_id: str | None = None):
    """The FINISHED analysis run ``run_id``, or the latest FINISHED analysis run of the experiment."""
    return find_run_of_kind(client, experiment_id, ANALYSIS, "transfer-core analyze", run_id)


RANKINGS = {"validation": SELECTION_ARTIFACT, "test": RANKING_ARTIFACT}


def class_ranking(client: MlflowClient, analysis_run_id: str, split: str = "validation") -> pd.DataFrame:
    """A class ranking of an analysis run: one row per source class, most helpful first.

    ``split="validation"`` (the default): fitted on the ranking half of the validation split,
    the ranking that chooses which classes a counterfactual removes. ``split="test"``: the
    ``class_influence.csv`` of the findings, which chooses nothing. Columns ``class_index,
    class_name, influence, std_error, ci_low, ci_high, split``; influence on target accuracy
    when the run's output was ``correct``, else on that output.
    """
    if split not in RANKINGS:
        raise ConfigError(f"unknown ranking split {split!r}; choose one of {', '.join(RANKINGS)}")
    run = get_analysis_run(client, analysis_run_id)
    path = artifact_path(run, RANKINGS[split], client)
    if not Path(path).is_file():
        if split == "validation" and artifact_path(run, RANKING_ARTIFACT, client).is_file():
            raise ConfigError(f"analysis run {analysis_run_id} has no validation ranking ({SELECTION_ARTIFACT}): its "
                              "sweep's runs recorded no validation outputs; rerun the sweep with this version and "
                              "analyse it again, so that no class is chosen on the test split")
        raise ConfigError(f"analysis run {analysis_run_id} has no {RANKINGS[split]} (status {run.info.status}); "
                          "rerun `transfer-core analyze`")
    return pd.read_csv(path)
