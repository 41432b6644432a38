"""The ``attribute`` step: class influences from a handful of models, as one MLflow run.

Trains M members (:func:`~transfer_core.attribution.train_member`) with the config of a sweep's runs (or a
given config), featurizes each (:class:`~transfer_core.attribution.Attributor`) and logs, as artifacts of an
``attribution`` run (tags ``transfer_core.kind=attribution``, ``sweep_id``, the validation digests):

- ``class_influence_validation.csv``: the ranking on the **ranking half** of the target validation split,
  the same half the analysis ranks on (:func:`~transfer_core.data.validation_halves`), in the analysis's
  format (split ``validation-ranking-half``): what a counterfactual with ``ranking=attribution`` removes by;
- ``class_influence.csv``: the ranking on the target test split (split ``test``; findings only, nothing is
  chosen on it), same format;
- ``top_images.csv``: for each of ``top_examples`` test examples (a seeded sample), its ``top_sources``
  highest-scoring source images (``target_index, target_file, rank, source_index, source_file,
  source_class, score``);
- ``ranking.png`` (most helpful and most detrimental classes with bootstrap intervals over the models),
  ``summary.json`` and ``report.html`` linking them;

and metrics ``n_models``, ``train_cpu_s``, ``featurize_cpu_s``, ``cpu_s``, ``selection_split_half_spearman``
(two disjoint halves of the models, validation ranking half; the name the analysis uses, so the
counterfactual's stability warning reads either) and ``test_split_half_spearman``.

Sign convention: positive = including the source class helps the target. Influences are in the target
output's units under TRAK's linearisation (summed over a class's images): compare rankings, not values.

The run is keyed (:func:`~transfer_core.track.steps.step_key`) on the config, the data, the settings and the
attribution code: a rerun reuses a FINISHED run. Featurized models are kept under
``ctx.dirs.cache/attribution/<key>/`` (one file per model), so a killed step resumes, and a larger
``ensemble_models`` featurizes only the new models.

Example::

    result = attribute("demo", settings=AttributionSettings(ensemble_models=5), ctx=ctx)
    print(result.run_id, result.ranking.head())
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from transfer_core.attribution.settings import AttributionSettings
from transfer_core.config import ConfigError, RunConfig, resolve_config
from transfer_core.data import data_digest, load_transfer_data, validation_digests, validation_halves
from transfer_core.execute import Context
from transfer_core.track import (KIND_TAG, artifact_path, describe_run, existing_experiment, get_experiment_id,
                                 get_run_of_kind, latest_run, log_metrics, log_new_params, run_config, run_scope,
                                 set_tags)
from transfer_core.track.runs import ATTRIBUTION, SUBSET_RUN, find_run_of_kind
from transfer_core.track.steps import find_step, step_key, step_tags

RANKING_ARTIFACT = "class_influence.csv"  # the analysis's names and format (analysis/writers.py)
SELECTION_ARTIFACT = "class_influence_validation.csv"
TOP_IMAGES_ARTIFACT = "top_images.csv"
REPORT_ARTIFACT = "report.html"
BOOTSTRAP = 200  # resamples of the models for the intervals
CONFIDENCE = 0.95
SPLIT_HALVES = 20  # random pairs of disjoint model halves averaged for the split-half Spearman


@dataclass
class AttributionResult:
    run_id: str
    ranking: pd.DataFrame  # class_influence_validation.csv: the validation ranking half's ranking
    reused: bool = False


def attribution_key(config: RunConfig, settings: AttributionSettings, data: str) -> str:
    """What an attribution is a function of: the config, the data's digest, the settings, the code."""
    return step_key("attribution", config=config, data=data, code="attribution", extra=settings.as_dict())


def featurize_dir(config: RunConfig, settings: AttributionSettings, data: str, ctx: Context) -> Path | None:
    """Where featurized models are cached: keyed without the step-only fields, so a larger M reuses them.
    None when the context has no cache folder (then nothing is kept between calls)."""
    if ctx.dirs.cache is None:
        return None
    key = step_key("attribution-features", config=config, data=data, code="attribution",
                   extra=settings.featurization())
    return ctx.dirs.cache_path("attribution", key[:16])


def sweep_config(client: MlflowClient, experiment_id: str, sweep_id: str) -> RunConfig:
    """The config a FINISHED subset run of sweep ``sweep_id`` was trained with."""
    found = latest_run(client, experiment_id, SUBSET_RUN, sweep_id=sweep_id)
    if found is None:
        raise ConfigError(f"sweep {sweep_id!r} has no FINISHED subset run in this experiment; run or resume the "
                          "sweep first, or give --profile")
    return run_config(found)


def attribute(experiment: str, sweep_id: str | None = None, settings: AttributionSettings = AttributionSettings(),
              *, ctx: Context, profile: str | None = None, overrides: dict | None = None,
              config: RunConfig | None = None, device=None, run_id: str | None = None,
              recompute: bool = False) -> AttributionResult:
    """Attribute with ``settings.ensemble_models`` models and log an attribution run; see the module docstring.

    The members train with ``config`` when given, else with ``profile`` when given, else with the config of
    sweep ``sweep_id`` (default: the experiment's only sweep), so that the ranking is of the same source,
    target, recipe and validation split as the analysis's; ``overrides`` (dotted fields) apply on top.
    ``run_id`` continues a RUNNING run made elsewhere (``mlflow run``); otherwise a FINISHED run with the same
    key is returned (``reused``) unless ``recompute``.
    """
    from transfer_core.analysis.step import resolve_sweep  # the analysis's rule for "the experiment's sweep"

    client = ctx.client
    # with a sweep, the experiment must hold it; a given profile or config may start a new experiment
    experiment_id = existing_experiment(client, experiment) if config is None and not profile else \
        get_experiment_id(client, experiment)
    if config is None:
        base = None
        if not profile:
            sweep_id = resolve_sweep(client, experiment_id, experiment, sweep_id)
            base = sweep_config(client, experiment_id, sweep_id)
        config = resolve_config(profile, overrides, base=base)[0]
    data = load_transfer_data(config.data, ctx.dirs)
    digest = data_digest(config.data, ctx.dirs)
    validation = validation_digests(data.target_val, config.data.split_seed)
    key = attribution_key(config, settings, digest)
    if run_id is None and not recompute:
        found = find_step(client, experiment_id, ATTRIBUTION, key)
        if found is not None:
            return _result(client, found.info.run_id, reused=True)
    tags = {KIND_TAG: ATTRIBUTION, "sweep_id": sweep_id or "", **step_tags(key), **validation,
            MLFLOW_RUN_NAME: f"attribution-{sweep_id or config.data.target}"}
    if run_id is None:
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
    else:
        set_tags(client, run_id, tags)
    with run_scope(client, run_id), tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result, per_example = featurize(config, data, settings, featurize_dir(config, settings, digest, ctx),
                                        device, ctx.progress)
        summary = write_artifacts(Path(tmp), result, per_example, config, settings)
        params = {f"attribution.{k}": str(v) for k, v in settings.as_dict().items()}
        log_new_params(client, run_id, {**params, **config.to_params()})
        log_metrics(client, run_id, {**summary, "total_s": time.perf_counter() - start})
        client.log_artifacts(run_id, tmp)
    out = _result(client, run_id)
    describe_run(client, run_id, attribution_note(out, summary, settings))
    return out


def featurize(config: RunConfig, data, settings: AttributionSettings, save_dir: Path | None, device=None,
              progress: bool = False):
    """Train (or reuse) and featurize models ``0 .. M-1``; returns the :class:`Attribution` and the test
    examples scored one by one ``(T,)``."""
    from tqdm.auto import tqdm

    from transfer_core.attribution import Attributor, train_member

    val, test = data.target_val, data.target_test
    ranking_half = validation_halves(val.labels.numpy(), config.data.split_seed)
    n = min(settings.top_examples, len(test))
    per_example = np.sort(np.random.default_rng([settings.projection_seed, 23]).choice(len(test), n, replace=False))
    att = Attributor(data.source, settings, save_dir=save_dir, device=device)
    att.add_targets("validation", val, groups=np.where(ranking_half, 0, -1), group_names=["ranking"])
    att.add_targets("test", test, per_example=per_example)
    for m in tqdm(range(settings.ensemble_models), desc="attribution models", disable=not progress):
        if not att.done(m):
            att.featurize(m, train_member(config, data, settings.ensemble, m, device=device))
    return att.finalize(range(settings.ensemble_models)), per_example


def write_artifacts(root: Path, result, per_example: np.ndarray, config: RunConfig,
                    settings: AttributionSettings) -> dict:
    """Write the tables, figure, summary and report under ``root``; returns the run's metrics."""
    from transfer_core.analysis import figures, findings, report

    rankings = {SELECTION_ARTIFACT: result.class_ranking("validation", split="validation-ranking-half",
                                                         bootstrap=BOOTSTRAP, confidence=CONFIDENCE),
                RANKING_ARTIFACT: result.class_ranking("test", split="test", bootstrap=BOOTSTRAP,
                                                       confidence=CONFIDENCE)}
    for name, table in rankings.items():
        table.to_csv(root / name, index=False)
    top = result.top_sources("test", k=settings.top_sources)
    top.to_csv(root / TOP_IMAGES_ARTIFACT, index=False)
    selection = rankings[SELECTION_ARTIFACT].drop(columns="split")
    lists = findings.ranked_lists(selection, 10)
    figures.ranking(pd.DataFrame(lists["most_helpful"], columns=selection.columns),
                    pd.DataFrame(lists["most_detrimental"], columns=selection.columns),
                    f"{settings.target_output} (attribution)", root / "ranking.png")
    cpu = result.cpu_seconds()
    summary = {"n_models": result.n_models, "train_cpu_s": cpu["train"], "featurize_cpu_s": cpu["featurize"],
               "cpu_s": cpu["total"], "n_top_examples": len(per_example),
               "top_influence": float(selection["influence"].iloc[0]),
               "bottom_influence": float(selection["influence"].iloc[-1])}
    if result.n_models >= 2:
        summary["selection_split_half_spearman"] = float(np.nanmean(
            result.split_half("validation", n_splits=SPLIT_HALVES)))
        summary["test_split_half_spearman"] = float(np.nanmean(result.split_half("test", n_splits=SPLIT_HALVES)))
    (root / "summary.json").write_text(json.dumps({**summary, "sign": "positive = including the class helps",
                                                   "settings": settings.as_dict()}, indent=1, default=str))
    half = summary.get("selection_split_half_spearman", float("nan"))
    sections = [
        report.Section("Class ranking for counterfactuals (validation, ranking half)",
                       f"Gradient attribution (TRAK through the transfer) from {result.n_models} {settings.ensemble} "
                       f"models: each class's summed score on the target {settings.target_output} of the ranking "
                       "half of the validation split, the half the retraining analysis ranks on. With "
                       "ranking=attribution this ranking chooses which classes a counterfactual removes. Intervals: "
                       f"bootstrap over the models ({BOOTSTRAP} resamples). Split-half Spearman (disjoint halves of "
                       f"the models): {half:.3f}.", [SELECTION_ARTIFACT, "ranking.png"], ["ranking.png"],
                       rankings[SELECTION_ARTIFACT].head(20)),
        report.Section("Class influence on the target test split",
                       "The same on the test split (findings only; nothing is chosen on it).", [RANKING_ARTIFACT], [],
                       rankings[RANKING_ARTIFACT].head(20)),
        report.Section("Top source images per target example",
                       f"For {len(per_example)} test examples (a sample seeded by projection_seed), the "
                       f"{settings.top_sources} source images with the highest scores on the example's "
                       f"{settings.target_output}: near-duplicates and leaks show up first.", [TOP_IMAGES_ARTIFACT],
                       [], top.head(20)),
    ]
    report.write(root, f"Attribution from {result.n_models} models ({settings.ensemble})", {
        "source": config.data.source, "target": config.data.target, "models": str(result.n_models),
        "CPU seconds (train + featurize)": f"{cpu['train']:.0f} + {cpu['featurize']:.0f}",
        "summary": "summary.json"}, sections, REPORT_ARTIFACT)
    return summary


def _result(client: MlflowClient, run_id: str, reused: bool = False) -> AttributionResult:
    run = client.get_run(run_id)
    return AttributionResult(run_id, pd.read_csv(artifact_path(run, SELECTION_ARTIFACT, client)), reused)


def attribution_note(result: AttributionResult, summary: dict, settings: AttributionSettings) -> str:
    """The run's description in the MLflow UI."""
    top, bottom = result.ranking.iloc[0], result.ranking.iloc[-1]
    half = summary.get("selection_split_half_spearman", float("nan"))
    return (f"Gradient attribution of the source classes from {summary['n_models']} {settings.ensemble} models "
            f"({summary['cpu_s']:.0f} CPU-s; positive = including the class helps). Validation ranking half: most "
            f"helpful {top.class_name} ({top.influence:+.4g}), most detrimental {bottom.class_name} "
            f"({bottom.influence:+.4g}); split-half Spearman {half:.2f}. A screen: check it by retraining. Report: "
            f"`{REPORT_ARTIFACT}`; rankings `{SELECTION_ARTIFACT}`, `{RANKING_ARTIFACT}`; `{TOP_IMAGES_ARTIFACT}`. "
            f"Next: `transfer-core counterfactual --ranking attribution --analysis {result.run_id}`.")


def get_attribution_run(client: MlflowClient, run_id: str, finished: bool = False):
    """The MLflow run ``run_id``, checked to be an attribution run (and FINISHED); ConfigError otherwise."""
    return get_run_of_kind(client, run_id, ATTRIBUTION, "transfer-core attribute", finished)


def find_attribution_run(client: MlflowClient, experiment_id: str, run_id: str | None = None):
    """The FINISHED attribution run ``run_id``, or the latest FINISHED attribution run of the experiment."""
    return find_run_of_kind(client, experiment_id, ATTRIBUTION, "transfer-core attribute", run_id)
