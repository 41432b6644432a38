"""The ``transfer-core`` commands. Each one parses, validates, and calls the library.

The MLproject entry points call these same commands, so ``mlflow run . -e NAME`` and
``transfer-core NAME`` behave identically.
"""
from __future__ import annotations

import logging
import os

import click

from transfer_core.cli.options import (TEXT, Choice, IntRange, config_options, experiment_option, friendly_errors,
                                       given, merge_overrides, open_context, progress_option, set_option,
                                       settings_from, settings_options, store_options, transfer_params_option)
from transfer_core.analysis.settings import AnalysisSettings
from transfer_core.attribution.settings import AttributionSettings
from transfer_core.config import ConfigError
from transfer_core.counterfactual.settings import CounterfactualPlan, EvidenceRule
from transfer_core.execute.settings import ExecutorSettings
from transfer_core.sweep.settings import SweepSettings
from transfer_core.track import DEFAULT_EXPERIMENT
from transfer_core.tune.settings import TuneSettings
from transfer_core.workflow.settings import PipelineSettings, study_names

RULE_SKIP = ("confidence",)  # the gate's family-wise level stays the library's (EvidenceRule.confidence)


def overrides_of(overrides, transfer_mode=None, alpha=None, sweep_seed=None) -> dict[str, str]:
    """``--set`` values and the dedicated options, as the dotted overrides ``resolve_config`` takes."""
    merged = merge_overrides(overrides)
    merged.update(given(**{"transfer.mode": transfer_mode, "alpha": alpha, "sweep_seed": sweep_seed}))
    return merged


def invocation_run_id() -> str | None:
    """The run of an enclosing ``mlflow run`` (its entry point's command runs with MLFLOW_RUN_ID set)."""
    return os.environ.get("MLFLOW_RUN_ID") or None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose):
    """transfer_core: which source classes help or hurt transfer to a target task.

    Every model is pretrained on a random half of the source classes and transferred to the
    target; each is one MLflow run. Influences of each source class on each target example
    are fitted from many such runs (positive influence = including the class helps).
    """
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(asctime)s %(name)s: %(message)s")


@main.command("subset-run")
@config_options
@click.option("--index", type=IntRange(min=0), default=0, show_default=True,
              help="Model index: with the sweep seed it fixes the class mask and the training seed.")
@click.option("--mask", type=TEXT, default=None,
              help="A .npy boolean mask (one entry per source class) to use instead of the random one.")
@click.option("--log-checkpoint/--no-log-checkpoint", default=True, show_default=True,
              help="Log the transferred model as model.pt (about 0.3 MB for the quick profile).")
@friendly_errors
def subset_run(profile, overrides, transfer_mode, alpha, sweep_seed, experiment, index, mask, log_checkpoint,
               **store):
    """Pretrain on one class subset, transfer to the target, log it all as one MLflow run."""
    import numpy as np

    from transfer_core.config import resolve_config
    from transfer_core.execute import SubsetRunner

    config, _ = resolve_config(profile, overrides_of(overrides, transfer_mode, alpha, sweep_seed))
    mask_file, mask = mask, None
    if mask_file:
        try:
            mask = np.load(mask_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read mask file {mask_file} ({exc}); give a .npy boolean array") from None
    runner = SubsetRunner(config, experiment or DEFAULT_EXPERIMENT, open_context(**store))
    index = index if index is not None else 0
    run_id, result = runner.run(index, mask=mask, run_id=invocation_run_id(), name=runner.run_name(index),
                                log_checkpoint=log_checkpoint)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in {**result.metrics, **result.timings}.items())
    click.echo(f"run {run_id} FINISHED: {metrics}")


@main.command("prepare")
@config_options
@click.option("--workers", type=IntRange(min=1), default=None,
              help="Threads that decode images while preparing. Unset: one per CPU core.")
@click.option("--verify/--no-verify", default=False, show_default=True,
              help="Afterwards, re-read every source file and check its contents against the prepared copy "
                   "(a file rewritten with the same size and modification time is otherwise not noticed).")
@progress_option
@friendly_errors
def prepare_command(profile, overrides, transfer_mode, alpha, sweep_seed, experiment, workers, verify, progress,
                    **store):
    """Prepare an image-folder source for streaming: one file of images plus an index, under the cache.

    What the runs of the same config would prepare on first use, made ahead (in parallel, with
    a progress bar; an interrupted preparation resumes). The copy is keyed on the tree's files
    (paths, sizes, modification times): a changed tree is prepared again, never served stale.
    Use the config the runs use, e.g. --profile imagenet64 --set data.source=imagefolder:/data/imagenet.
    """
    from transfer_core.config import resolve_config
    from transfer_core.data.loading import prepare_source
    from transfer_core.data.prepared import PreparedSplit

    config, _ = resolve_config(profile, overrides_of(overrides, transfer_mode, alpha, sweep_seed))
    ctx = open_context(**store, progress=progress)
    for folder in prepare_source(config.data, ctx.dirs, workers, progress):
        split = PreparedSplit(folder)
        changed = split.verify() if verify else []
        if changed:
            raise ConfigError(f"{len(changed)} file(s) of {split.manifest['tree']} changed since they were prepared "
                              f"(first: {changed[0]}) without a new size or modification time; delete {folder} "
                              "and prepare again")
        size = split.offsets[-1] / 2 ** 20
        click.echo(f"{split.manifest['tree']}: {len(split):,} images of {split.n_classes} classes, {split.format}, "
                   f"{size:,.0f} MiB in {folder}{' (verified)' if verify else ''}")


@main.command("tune")
@config_options
@settings_options(TuneSettings())
@progress_option
@friendly_errors
def tune_command(profile, overrides, transfer_mode, alpha, sweep_seed, experiment, progress, **kwargs):
    """Tune the transfer hyperparameters with Optuna on the target validation split.

    One backbone is pretrained and logged, then every trial transfers it with other
    hyperparameters; the study is one MLflow run with one child run per trial. Hand the
    result to other commands with --transfer-params-from RUN_ID (or latest).
    """
    from transfer_core.config import resolve_config
    from transfer_core.tune import tune

    settings = settings_from(TuneSettings(), kwargs)
    config, _ = resolve_config(profile, overrides_of(overrides, transfer_mode, alpha, sweep_seed))
    ctx = open_context(**kwargs, progress=progress)
    result = tune(config, settings, experiment or DEFAULT_EXPERIMENT, ctx=ctx, profile=profile or "tune",
                  run_id=invocation_run_id())
    counts = ", ".join(f"{n} {s.lower()}" for s, n in result.counts.items())
    baseline = "n/a" if result.default_value is None else f"{result.default_value:.4f}"
    recipe = ", ".join(f"{k}={v}" for k, v in result.best_params.items())
    click.echo(f"study {result.study_name} ({result.storage}): {counts}\n"
               f"best target_val_acc={result.best_value:.4f} (default recipe {baseline}) with {recipe}\n"
               f"tune run {result.run_id}; use it with --transfer-params-from {result.run_id}")


@main.command("sweep")
@config_options
@transfer_params_option
@settings_options(SweepSettings())
@settings_options(ExecutorSettings())
@progress_option
@friendly_errors
def sweep_command(profile, overrides, transfer_mode, alpha, sweep_seed, experiment, transfer_params_from, progress,
                  **kwargs):
    """Train N subset runs of one config as one sweep: resumable, parallel, or on Ray.

    The sweep is a parent MLflow run with one child run per model index. Interrupt it
    at any time; the same command later trains only the indices without a FINISHED run.
    """
    from transfer_core.config import resolve_config
    from transfer_core.sweep import SweepIncomplete, sweep_with_summary
    from transfer_core.tune import recipe_from

    settings = settings_from(SweepSettings(), kwargs)
    execution = settings_from(ExecutorSettings(), kwargs)
    experiment = experiment or DEFAULT_EXPERIMENT
    ctx = open_context(**kwargs, execution=execution, progress=progress)
    recipe = recipe_from(ctx.client, transfer_params_from, experiment, transfer_mode)
    config, provenance = resolve_config(profile, overrides_of(overrides, transfer_mode, alpha, sweep_seed),
                                        recipe=recipe.overrides if recipe else None,
                                        tune_run_id=recipe.run_id if recipe else None)
    summary = sweep_with_summary(config, settings, ctx=ctx, experiment=experiment, provenance=provenance,
                                 invocation_run_id=invocation_run_id())
    click.echo(f"sweep {summary.sweep_id} (parent run {summary.parent_run_id}): {summary.n_finished} of "
               f"{summary.n_models} runs FINISHED ({summary.n_reused} reused, {summary.n_trained} trained, "
               f"{summary.n_failed} failed); wall time per run median {summary.run_wall_median_s:.1f} s, "
               f"p90 {summary.run_wall_p90_s:.1f} s; total {summary.total_wall_s:.1f} s")
    if not summary.complete:
        raise SweepIncomplete(summary)


@main.command("sweeps")
@experiment_option
@store_options
@friendly_errors
def sweeps_command(experiment, **store):
    """List the sweep ids of an experiment, newest first."""
    from transfer_core.sweep import find_sweeps
    from transfer_core.track import existing_experiment

    client = open_context(**store).client
    for sweep_id in find_sweeps(client, existing_experiment(client, experiment or DEFAULT_EXPERIMENT)):
        click.echo(sweep_id)


@main.command("analyze")
@experiment_option
@click.option("--sweep", type=TEXT, default=None,
              help="Sweep id to analyse (see `transfer-core sweeps`). May be left out when the experiment has one "
                   "sweep.")
@settings_options(AnalysisSettings())
@store_options
@click.option("--recompute/--reuse", default=False, show_default=True,
              help="By default a FINISHED analysis of the same runs with the same options is reused (so reruns "
                   "of a script resume its counterfactuals); --recompute logs a new analysis run anyway.")
@progress_option
@friendly_errors
def analyze_command(experiment, sweep, recompute, progress, **kwargs):
    """Fit class influences from a sweep's FINISHED runs and log the findings as an analysis run.

    Positive influence = including the source class helps the target. Logs class_influence.csv,
    influence_matrix.npy, heatmap, image grids, leakage, misleading classes, sub-populations and
    one HTML report, whose path is printed at the end.
    """
    from transfer_core.analysis import analyze

    settings = settings_from(AnalysisSettings(), kwargs)
    result = analyze(experiment or DEFAULT_EXPERIMENT, sweep, settings, ctx=open_context(**kwargs, progress=progress),
                     run_id=invocation_run_id(), recompute=recompute)
    top, bottom = result.ranking.iloc[0], result.ranking.iloc[-1]
    if result.reused:
        click.echo(f"reusing analysis run {result.run_id}: the same {result.sweep_id} runs with the same options "
                   "(--recompute makes a new one)")
    click.echo(f"analysis run {result.run_id} of sweep {result.sweep_id} FINISHED: most helpful class "
               f"{top.class_name} ({top.influence:+.4g}), most detrimental {bottom.class_name} "
               f"({bottom.influence:+.4g}); positive = including the class helps")
    click.echo(f"report: {result.report_path}")


@main.command("attribute")
@experiment_option
@click.option("--sweep", type=TEXT, default=None,
              help="Sweep whose config (source, target, recipe, validation split) the models train with. May be "
                   "left out when the experiment has one sweep.")
@click.option("--profile", type=TEXT, default=None,
              help="Train with this profile instead of the sweep's config (then no sweep is needed).")
@set_option
@settings_options(AttributionSettings())
@store_options
@click.option("--recompute/--reuse", default=False, show_default=True,
              help="By default a FINISHED attribution with the same config, data and options is reused; "
                   "--recompute logs a new attribution run anyway (featurized models stay cached).")
@progress_option
@friendly_errors
def attribute_command(experiment, sweep, profile, overrides, recompute, progress, **kwargs):
    """Rank the source classes by gradient attribution from a few models (TRAK through the transfer).

    Trains --ensemble-models models, differentiates each through the transfer and logs an attribution
    run: class_influence_validation.csv (validation ranking half; what a counterfactual with
    --ranking attribution removes by), class_influence.csv (test), top_images.csv (per target example,
    its top source images), ranking.png and report.html. Positive = including the class helps the
    target. A screen: check its ranking by retraining (docs/attribution.md).
    """
    from transfer_core.attribution.step import attribute

    settings = settings_from(AttributionSettings(), kwargs)
    result = attribute(experiment or DEFAULT_EXPERIMENT, sweep, settings, ctx=open_context(**kwargs, progress=progress),
                       profile=profile, overrides=merge_overrides(overrides), run_id=invocation_run_id(),
                       recompute=recompute)
    top, bottom = result.ranking.iloc[0], result.ranking.iloc[-1]
    if result.reused:
        click.echo(f"reusing attribution run {result.run_id}: the same config, data and options (--recompute makes "
                   "a new one)")
    click.echo(f"attribution run {result.run_id} FINISHED: on the validation ranking half most helpful class "
               f"{top.class_name} ({top.influence:+.4g}), most detrimental {bottom.class_name} "
               f"({bottom.influence:+.4g}); positive = including the class helps")
    config = "".join([f" --profile {profile}" if profile else ""] + [f" --set {o}" for o in overrides])
    click.echo(f"A screen (docs/attribution.md); check its ranking by retraining: transfer-core counterfactual "
               f"--experiment {experiment or DEFAULT_EXPERIMENT} --ranking attribution --analysis {result.run_id}"
               f"{config}")


@main.command("counterfactual")
@experiment_option
@click.option("--analysis", type=TEXT, default=None,
              help="Analysis run (with --ranking attribution: attribution run) whose class ranking "
                   "(class_influence_validation.csv) to check. Default: the experiment's latest FINISHED one.")
@settings_options(CounterfactualPlan())
@click.option("--profile", type=TEXT, default=None,
              help="Train with this profile instead of the config of the analysed sweep's runs (the default).")
@set_option
@click.option("--transfer-mode", type=Choice(["fixed", "full"]), default=None,
              help="fixed (frozen backbone in eval mode + linear head) or full (all weights train). Default: the "
                   "analysed sweep's.")
@transfer_params_option
@settings_options(ExecutorSettings())
@settings_options(EvidenceRule(), skip=RULE_SKIP)
@store_options
@progress_option
@friendly_errors
def counterfactual_command(experiment, analysis, profile, overrides, transfer_mode, transfer_params_from,
                           progress, **kwargs):
    """Retrain without the classes an analysis ranks most detrimental / helpful / at random.

    Classes are removed by the analysis's validation ranking (fitted on one half of the
    validation split); the other half chooses k and must show the gain before a pruned source
    is champion; test accuracy is reported, never used to choose. Each (order, k, seed) is one
    child run of a counterfactual run, which gets a plot of target test accuracy against k,
    tables, paired tests and the selection. Rerunning the same command trains only the missing
    points; two commands at once share the grid without training a point twice.

    The plan (orders, ks, seeds) is fixed when it starts. Another plan on the same analysis is
    another counterfactual run: it reuses the points already trained, and it is another look at
    the selection half, which may spend a smaller share of the error rate (docs/counterfactual.md,
    "Every look counts"). The command refuses settings that carve another validation split than the
    analysis's.
    """
    from transfer_core.counterfactual import counterfactual_from_analysis
    from transfer_core.tune import recipe_from

    plan = settings_from(CounterfactualPlan(), kwargs)
    execution = settings_from(ExecutorSettings(), kwargs)
    rule = settings_from(EvidenceRule(), kwargs)
    experiment = experiment or DEFAULT_EXPERIMENT
    ctx = open_context(**kwargs, execution=execution, progress=progress)
    recipe = recipe_from(ctx.client, transfer_params_from, experiment, transfer_mode)
    outcome = counterfactual_from_analysis(experiment, plan, ctx=ctx, analysis_run_id=analysis,
                                           profile=profile, overrides=overrides_of(overrides, transfer_mode),
                                           recipe=recipe, invocation_run_id=invocation_run_id(), rule=rule)
    for warning in outcome.warnings:
        click.echo(f"Warning: {warning}", err=True)
    runs = outcome.runs
    ranker = "attribution" if plan.ranking == "attribution" else "analysis"
    click.echo(f"counterfactual {runs.counterfactual_id} (run {runs.parent_run_id}) of {ranker} "
               f"{outcome.analysis_run_id}: {len(runs.table)} runs ({runs.n_trained} trained here, "
               f"{len(runs.table) - runs.n_trained} reused or trained elsewhere); look "
               f"{outcome.selection.look} at the selection half\n{outcome.selection.describe()}")


@main.command("register")
@experiment_option
@click.option("--counterfactual", type=TEXT, default=None,
              help="Counterfactual run whose chosen model to register. Default: the experiment's latest "
                   "FINISHED counterfactual run.")
@click.option("--name", type=TEXT, default=None, help="Registered model name. Unset: <experiment>-target.")
@settings_options(EvidenceRule(), skip=RULE_SKIP)
@store_options
@friendly_errors
def register_command(experiment, counterfactual, name, **kwargs):
    """Register the champion target model (alias `champion`) in the MLflow Model Registry.

    The decision is recomputed from the counterfactual's logged runs, never read from a stored
    flag: the pruned source's model becomes champion only when its paired gain on the held-out
    half of the validation split has a confidence interval above zero, over at least --min-seeds
    seeds fixed in the plan, at the level its look at that half may spend; otherwise the
    full-source model does, and the command says why in one sentence.
    """
    from transfer_core.registry import latest_counterfactual_run, register_champion
    from transfer_core.registry.champion import PICKLE_NOTE

    rule = settings_from(EvidenceRule(), kwargs)
    ctx = open_context(**kwargs)
    run_id = counterfactual or latest_counterfactual_run(ctx.client, experiment or DEFAULT_EXPERIMENT)
    result = register_champion(run_id, ctx=ctx, name=name, run_id=invocation_run_id(), rule=rule)
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    click.echo(f"{result.message}\nregistered {result.name} version {result.version}: {result.uri} ({PICKLE_NOTE})")


@main.command("main")
@click.option("--settings", "study", type=TEXT, default=None, metavar="NAME|PATH",
              help=f"Pipeline settings: a named study ({', '.join(study_names())}) or a path to a .toml file of "
                   "PipelineSettings fields; the options below override it (--set adds to its overrides). Unset: "
                   "the main job's defaults, shown below.")
@settings_options(PipelineSettings())
@store_options
@progress_option
@friendly_errors
def main_job(study, progress, **kwargs):
    """The pipeline: tune -> sweep -> analyze -> counterfactual -> register (-> publish), reusing what is done.

    Every step is its own MLflow run; a rerun trains nothing it has, and a code change recomputes
    the steps whose computing code changed (docs/pipeline.md). `mlflow run .` runs this command;
    `--settings cifar100_to_cifar10` runs the study behind the published results (docs/results.md).
    """
    from transfer_core.workflow import run_pipeline

    added = [item for item in kwargs.pop("overrides") or () if item and item.strip()]
    settings = settings_from(PipelineSettings.load(study), kwargs)
    if added:  # --set adds to the study's overrides (a later one wins for the same field)
        settings = settings.replace(overrides=",".join([*settings.overrides, *added]))
    ctx = open_context(**kwargs, execution=settings.executor, progress=progress)
    result = run_pipeline(settings, ctx, echo=click.echo, invocation_run_id=invocation_run_id())
    click.echo(result.where_to_look())


@main.command("publish")
@experiment_option
@click.option("--out", "out_dir", type=TEXT, default="docs/results", show_default=True,
              help="Folder to write RESULTS.md, the figures and the tables into (files of the same name are replaced).")
@click.option("--analysis", "analysis_run_id", type=TEXT, default=None,
              help="Analysis run to publish. Default: the experiment's latest FINISHED analysis run. An "
                   "attribution run's id publishes its attribution-ranked counterfactual without an analysis.")
@click.option("--counterfactual", "counterfactual_run_id", type=TEXT, default=None,
              help="Counterfactual run to publish. Default: the latest FINISHED one made from that analysis run "
                   "(in an experiment without an analysis: its latest FINISHED one, which must be ranked by "
                   "attribution).")
@click.option("--top-k", type=IntRange(min=1), default=10, show_default=True,
              help="Most helpful and most detrimental classes listed, overall and per target class.")
@click.option("--subpopulation", type=TEXT, default=None, metavar="TARGET:SOURCE",
              help="Sub-population to show, e.g. automobile:pickup_truck. Default: the group with the largest "
                   "share of its target class (at least 8 images).")
@store_options
@friendly_errors
def publish_command(experiment, out_dir, analysis_run_id, counterfactual_run_id, top_k, subpopulation, **store):
    """Write an experiment's results (figures, tables, RESULTS.md) into a folder for a README.

    Reads the analysis run, the counterfactual run made from it and the tune run whose recipe
    the sweep used (the sweep's tune_run_id tag); every table in RESULTS.md names the run and
    artifact it comes from. A counterfactual ranked by attribution (`counterfactual --ranking
    attribution`) is published without an analysis when the experiment has none, or with
    --analysis ATTRIBUTION_RUN: its attribution run's ranking, figure and top images, and the
    counterfactual's tables and verdicts (docs/attribution.md).
    """
    from transfer_core.workflow.publish import publish

    path = publish(experiment or DEFAULT_EXPERIMENT, out_dir, ctx=open_context(**store),
                   analysis_run_id=analysis_run_id, counterfactual_run_id=counterfactual_run_id, top_k=top_k,
                   subpopulation=subpopulation)
    click.echo(f"results written to {path}")


@main.command("experiment")
@click.argument("name", default=DEFAULT_EXPERIMENT, metavar="[NAME]")
@store_options
@friendly_errors
def experiment_command(name, **store):
    """Create experiment NAME (default transfer_core) as the tool makes one, if missing, and print its id.

    The tool's experiments keep their artifacts beside a sqlite store (mlruns/artifacts/<name>) and open in
    the UI's Model training mode. `mlflow run --experiment-name NAME` creates a missing experiment its own
    way instead (artifacts under ./mlruns/<id> of wherever it runs), so `make run` calls this first.
    """
    from transfer_core.track import get_experiment_id

    click.echo(get_experiment_id(open_context(**store).client, name))


@main.command("links")
@click.option("--tracking-uri", type=TEXT, default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db.")
@click.option("--base", type=TEXT, default="http://127.0.0.1:5000", show_default=True,
              help="Where the MLflow UI answers.")
@friendly_errors
def links_command(tracking_uri, base):
    """Print the MLflow UI links of every experiment this tool wrote, as `transfer-core ui` does: its runs in
    Model training mode, the saved views (every trained model; accuracy against k), the analysis report, the
    counterfactual figure and the registered version's page, each only when it exists. Writes nothing."""
    from transfer_core.track.store import default_tracking_uri, sqlite_path
    from transfer_core.workflow.links import store_links

    uri = tracking_uri or default_tracking_uri(create=False)
    store = sqlite_path(uri)
    if store is not None and not store.is_file():
        raise click.ClickException(f"there is no MLflow store at {store} yet; run `make run` (or a transfer-core "
                                   "command) first, or pass --tracking-uri")
    for line in store_links(open_context(uri).client, base):
        click.echo(line)
