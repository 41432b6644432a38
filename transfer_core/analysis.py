"""The ``analyze`` step: class influences of one sweep, with uncertainty, as one MLflow run.

Reads every FINISHED run of a sweep (:func:`transfer_core.collect.collect_sweep`), refuses
runs of different configs and too few runs per class, fits influences
(:mod:`transfer_core.influence`), and logs the findings (:mod:`transfer_core.analysis_artifacts`)
as artifacts of an analysis run tagged ``transfer_core.kind=analysis`` and ``sweep_id``.

Sign convention everywhere: positive influence = including the source class helps the target.

Example::

    result = analyze("demo", options=AnalysisOptions(output="margin", bootstrap=100))
    print(result.report_path)
    ranking = class_ranking(result.run_id)      # the class_influence.csv table
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from . import findings, influence
from .config import ConfigError, RunConfig
from .tracking import KIND_TAG, artifact_path, mark_failed

OUTPUTS = ("margin", "prob", "correct")
ANALYSIS_KIND = "analysis"
RANKING_ARTIFACT = "class_influence.csv"
MATRIX_ARTIFACT = "influence_matrix.npy"
REPORT_ARTIFACT = "report.html"
PER_RUN_PARAMS = ("subset.index", "subset.seed", "subset.n_kept")  # differ between runs by design
INPUTS_TAG = "analysis_inputs"  # hash of the analysed run ids and the options: equal hash, equal analysis


@dataclass(frozen=True)
class AnalysisOptions:
    """How to analyse a sweep; validated once by :meth:`validate`."""

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

    def validate(self) -> "AnalysisOptions":
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
        return self


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


def target_groups(labels: np.ndarray, n_target_classes: int) -> np.ndarray:
    """``(n_targets, 1 + n_target_classes)`` bool: the whole target, then each target class."""
    return np.concatenate([np.ones((len(labels), 1), bool), labels[:, None] == np.arange(n_target_classes)], 1)


def estimate(masks: np.ndarray, outputs: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str],
             target_names: list[str], options: AnalysisOptions) -> Estimates:
    """All influence estimates of one sweep, from ``CollectedRuns``-shaped arrays.

    ``masks`` ``(n_models, n_classes)`` bool; ``outputs[name]`` ``(n_models, n_targets)``;
    ``labels`` ``(n_targets,)`` target classes. Aggregates cover the chosen output and, when
    that is not ``correct``, accuracy too.
    """
    options.validate()
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
    return Estimates(options.output, per_example.influence, per_example.std_error, boot_se,
                     pd.concat(tables, ignore_index=True), stability, ridge, datamodel)


@dataclass
class AnalysisResult:
    run_id: str
    sweep_id: str
    report_path: Path
    ranking: pd.DataFrame  # the class_influence.csv table
    reused: bool = False  # an earlier FINISHED analysis of the same runs with the same options


def resolve_sweep(experiment_id: str, experiment: str, sweep_id: str | None) -> str:
    """``sweep_id``, or the experiment's only sweep (by its parent run, else by its subset runs' tags)."""
    from .collect import search_all
    from .sweep import find_sweeps
    if sweep_id:
        return sweep_id
    sweeps = find_sweeps(experiment_id)
    if not sweeps:  # runs logged without a sweep parent, e.g. by SubsetRunner in a loop
        runs = search_all(MlflowClient(), [experiment_id], f"tags.`{KIND_TAG}` = 'subset_run' and "
                                                           "attributes.status = 'FINISHED'")
        sweeps = sorted({r.data.tags["sweep_id"] for r in runs if r.data.tags.get("sweep_id")})
    if len(sweeps) == 1:
        return sweeps[0]
    if not sweeps:
        raise ConfigError(f"experiment {experiment!r} has no sweep; run `transfer-core sweep` first or pass --sweep")
    raise ConfigError(f"experiment {experiment!r} has {len(sweeps)} sweeps ({', '.join(sweeps[:5])}); "
                      "choose one with --sweep")


def existing_experiment(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage == "deleted":
        raise ConfigError(f"experiment {name!r} does not exist in this tracking store; check --experiment "
                          "and --tracking-uri")
    return found.experiment_id


def inputs_hash(run_ids: list[str], options: AnalysisOptions) -> str:
    """What an analysis is a function of: the set of runs and the options (seeds included)."""
    key = json.dumps([sorted(run_ids), asdict(options)], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _result(client: MlflowClient, run_id: str, sweep_id: str, reused: bool = False) -> AnalysisResult:
    run = client.get_run(run_id)
    return AnalysisResult(run_id, sweep_id, artifact_path(run, REPORT_ARTIFACT),
                          pd.read_csv(artifact_path(run, RANKING_ARTIFACT)), reused)


def analyze(experiment: str, sweep_id: str | None = None, options: AnalysisOptions = AnalysisOptions(),
            data_root=None, device=None, run_id: str | None = None, progress: bool = True,
            recompute: bool = False) -> AnalysisResult:
    """Analyse the FINISHED runs of a sweep and log an analysis run; see the module docstring.

    ``run_id`` continues a RUNNING run made elsewhere (``mlflow run``); otherwise one is made,
    unless a FINISHED analysis of the same runs with the same options exists: that one is
    returned (``reused``), so steps keyed on the analysis run (counterfactuals) resume, unless
    ``recompute``. Bad input (incompatible runs, too few runs per class) raises before anything
    is logged.
    """
    from .analysis_artifacts import write_artifacts
    from .collect import collect_sweep
    from .config import from_params

    options.validate()
    client = MlflowClient()
    experiment_id = existing_experiment(client, experiment)
    sweep_id = resolve_sweep(experiment_id, experiment, sweep_id)
    runs = collect_sweep(sweep_id, experiment_id, progress=progress)
    check_compatible(runs.run_ids, runs.run_params)
    influence.check_coverage(runs.masks, runs.source_classes, options.min_runs)
    config = from_params(runs.params)

    key = inputs_hash(runs.run_ids, options)
    if run_id is None and not recompute:
        found = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                                   filter_string=f"tags.`{KIND_TAG}` = '{ANALYSIS_KIND}' and tags.{INPUTS_TAG} = "
                                                 f"'{key}' and attributes.status = 'FINISHED'")
        if found:
            return _result(client, found[0].info.run_id, sweep_id, reused=True)
    tags = {KIND_TAG: ANALYSIS_KIND, "sweep_id": sweep_id, MLFLOW_RUN_NAME: f"analysis-{sweep_id}", INPUTS_TAG: key}
    if run_id is None:
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
    else:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    try:
        timings = {}
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            summary = write_artifacts(Path(tmp), sweep_id, runs, config, options, data_root, device, timings, progress)
            timings["total_s"] = time.perf_counter() - start
            params = {f"analysis.{k}": str(v) for k, v in asdict(options).items()}
            params.update({"analysis.n_runs": str(len(runs)), **config.to_params()})
            existing = client.get_run(run_id).data.params
            now = int(time.time() * 1000)
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items() if k not in existing],
                             metrics=[Metric(k, float(v), now, 0) for k, v in {**summary, **timings}.items()])
            client.log_artifacts(run_id, tmp)
    except BaseException as exc:
        mark_failed(client, run_id, exc)
        raise
    client.set_terminated(run_id, status="FINISHED")
    return _result(client, run_id, sweep_id)


def get_analysis_run(client: MlflowClient, run_id: str):
    """The MLflow run ``run_id``, checked to be an analysis run; ConfigError otherwise."""
    try:
        run = client.get_run(run_id)
    except Exception:
        raise ConfigError(f"analysis run {run_id!r} does not exist in this tracking store; "
                          "give the id of an `analyze` run") from None
    if run.data.tags.get(KIND_TAG) != ANALYSIS_KIND:
        raise ConfigError(f"run {run_id} is not an analysis run (its {KIND_TAG} tag is "
                          f"{run.data.tags.get(KIND_TAG)!r}); give the id of an `analyze` run")
    return run


def class_ranking(analysis_run_id: str) -> pd.DataFrame:
    """The ``class_influence.csv`` table of an analysis run: one row per source class, best first.

    Columns ``class_index, class_name, influence, std_error, ci_low, ci_high``; influence on
    target accuracy when the run's output was ``correct``, else on that output.
    """
    run = get_analysis_run(MlflowClient(), analysis_run_id)
    path = artifact_path(run, RANKING_ARTIFACT)
    if not Path(path).is_file():
        raise ConfigError(f"analysis run {analysis_run_id} has no {RANKING_ARTIFACT} (status {run.info.status}); "
                          "rerun `transfer-core analyze`")
    return pd.read_csv(path)
