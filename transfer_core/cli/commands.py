"""The ``transfer-core`` commands. Each one parses, validates, and calls the library.

The MLproject entry points call these same commands, so ``mlflow run . -e NAME`` and
``transfer-core NAME`` behave identically.
"""
from __future__ import annotations

import logging
import os

import click

from transfer_core.cli.options import (TEXT, Choice, FloatRange, IntRange, config_options, default, evidence_options,
                                       execution_settings, executor_options, experiment_option, friendly_errors,
                                       given, merge_overrides, open_context, progress_option, set_option,
                                       settings_options, store_options, transfer_params_option)
from transfer_core.analysis import OUTPUTS, AnalysisOptions
from transfer_core.config import ConfigError
from transfer_core.counterfactual import CounterfactualPlan
from transfer_core.track import DEFAULT_EXPERIMENT
from transfer_core.tune import TuneSettings
from transfer_core.workflow import PipelineSettings, study_names


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
@click.option("--mask", "mask_file", type=TEXT, default=None,
              help="A .npy boolean mask (one entry per source class) to use instead of the random one.")
@click.option("--log-checkpoint/--no-log-checkpoint", default=True, show_default=True,
              help="Log the transferred model as model.pt (about 0.3 MB for the quick profile).")
@friendly_errors
def subset_run(profile, overrides, transfer_mode, alpha, sweep_seed, data_root, experiment, tracking_uri,
               index, mask_file, log_checkpoint):
    """Pretrain on one class subset, transfer to the target, log it all as one MLflow run."""
    import numpy as np

    from transfer_core.config import resolve_config
    from transfer_core.execute import SubsetRunner

    config, _ = resolve_config(profile, overrides_of(overrides, transfer_mode, alpha, sweep_seed))
    mask = None
    if mask_file:
        try:
            mask = np.load(mask_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read mask file {mask_file} ({exc}); give a .npy boolean array") from None
    runner = SubsetRunner(config, experiment or DEFAULT_EXPERIMENT, open_context(tracking_uri, data_root))
    index = index if index is not None else 0
    run_id, result = runner.run(index, mask=mask, run_id=invocation_run_id(), name=runner.run_name(index),
                                log_checkpoint=log_checkpoint)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in {**result.metrics, **result.timings}.items())
    click.echo(f"run {run_id} FINISHED: {metrics}")


@main.command("prepare")
@config_options
@click.option("--workers", type=IntRange(min=1), default=None, help="Decoding threads. Default: one per CPU core.")
@click.option("--verify/--no-verify", default=False, show_default=True,
              help="Afterwards, re-read every source file and check its contents against the prepared copy "
                   "(a file rewritten with the same size and modification time is otherwise not noticed).")
@progress_option
@friendly_errors
def prepare_command(profile, overrides, transfer_mode, alpha, sweep_seed, data_root, experiment, tracking_uri,
                    workers, verify, progress):
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
    for folder in prepare_source(config.data, workers, progress):
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
@click.option("--n-trials", type=IntRange(min=1), default=None, show_default=default(TuneSettings, "n_trials"),
              help="Trials this call adds to the study (the study's first trial is the config's own recipe).")
@click.option("--total-trials", type=IntRange(min=1), default=None,
              help="Instead of --n-trials: add only the trials the study lacks to hold this many finished ones, "
                   "so rerunning the command after an interruption completes the study and then adds none "
                   "(the best params, and so the sweep they feed, stay the same).")
@click.option("--study-name", type=TEXT, default=None,
              help="Optuna study to create or extend. Default: <profile>-<mode>-<config hash>, so rerunning "
                   "the same command adds trials to the same study.")
@click.option("--storage", type=TEXT, default=None,
              help="Where the study lives: unset = journal file mlruns/optuna/<study>.journal (resumable, safe "
                   "for several processes on one machine); a *.journal path; or an RDB URL such as "
                   "postgresql://user:pw@host/db shared by several machines.")
@click.option("--space", "space", multiple=True, metavar="SPEC",
              help="Search space, e.g. 'lr=0.001:1:log;epochs=2:30;batch_size=64,128' (LOW:HIGH[:log] is a "
                   "range, a comma list a choice; names: lr, weight_decay, epochs, label_smoothing, "
                   "batch_size). Repeatable. Default: lr, weight_decay, epochs, label_smoothing (+ batch_size "
                   "in full mode).")
@click.option("--backbone-index", type=IntRange(min=0), default=None,
              help="Pretrain the shared backbone on the classes of sweep mask INDEX. Default: every source class.")
@click.option("--timeout", type=FloatRange(0, min_open=True), default=None,
              help="Stop starting new trials after this many seconds.")
@click.option("--sampler-seed", type=IntRange(min=0), default=None,
              help="Seed of the TPE sampler, for a reproducible search. Default: fresh (best when several "
                   "processes share a study).")
@progress_option
@friendly_errors
def tune_command(profile, overrides, transfer_mode, alpha, sweep_seed, data_root, experiment, tracking_uri,
                 n_trials, total_trials, study_name, storage, space, backbone_index, timeout, sampler_seed, progress):
    """Tune the transfer hyperparameters with Optuna on the target validation split.

    One backbone is pretrained and logged, then every trial transfers it with other
    hyperparameters; the study is one MLflow run with one child run per trial. Hand the
    result to other commands with --transfer-params-from RUN_ID (or latest).
    """
    from transfer_core.config import resolve_config
    from transfer_core.tune import SearchSpace, tune

    config, _ = resolve_config(profile, overrides_of(overrides, transfer_mode, alpha, sweep_seed))
    space_specs = [s for s in space if s.strip() and s.strip().lower() != "default"]
    settings = TuneSettings(**given(n_trials=n_trials, total_trials=total_trials, study_name=study_name,
                                    storage=storage, space=SearchSpace.parse(space_specs) if space_specs else None,
                                    backbone_index=backbone_index, timeout_s=timeout, sampler_seed=sampler_seed))
    ctx = open_context(tracking_uri, data_root, progress=progress)
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
@click.option("--n-models", required=True, type=IntRange(min=1),
              help="Models (subset runs) the sweep should have. Rerunning trains only the missing ones; a larger "
                   "number grows the sweep and reuses the runs it has.")
@executor_options
@click.option("--sweep-id", type=TEXT, default=None,
              help="Name the sweep yourself. Default: sweep-<hash of the config>, so the same command always "
                   "means the same sweep. A stored sweep of that name must have the same config.")
@click.option("--log-checkpoint/--no-log-checkpoint", default=False, show_default=True,
              help="Log each transferred model as model.pt (about 0.3 MB per run for the quick profile).")
@progress_option
@friendly_errors
def sweep_command(profile, overrides, transfer_mode, alpha, sweep_seed, data_root, experiment, tracking_uri,
                  transfer_params_from, n_models, executor, workers, ray_address, ray_cpus_per_run, ray_gpus_per_run,
                  pack, compile_, sweep_id, log_checkpoint, progress):
    """Train N subset runs of one config as one sweep: resumable, parallel, or on Ray.

    The sweep is a parent MLflow run with one child run per model index. Interrupt it
    at any time; the same command later trains only the indices without a FINISHED run.
    """
    from transfer_core.config import resolve_config
    from transfer_core.sweep import SweepIncomplete, sweep_with_summary
    from transfer_core.tune import recipe_from

    execution = execution_settings(executor, workers, ray_address, ray_cpus_per_run, ray_gpus_per_run, pack, compile_)
    experiment = experiment or DEFAULT_EXPERIMENT
    ctx = open_context(tracking_uri, data_root, execution, progress)
    recipe = recipe_from(ctx.client, transfer_params_from, experiment, transfer_mode)
    config, provenance = resolve_config(profile, overrides_of(overrides, transfer_mode, alpha, sweep_seed),
                                        recipe=recipe.overrides if recipe else None,
                                        tune_run_id=recipe.run_id if recipe else None)
    summary = sweep_with_summary(config, n_models, ctx=ctx, experiment=experiment, sweep_id=sweep_id,
                                 log_checkpoint=log_checkpoint, provenance=provenance,
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
def sweeps_command(experiment, data_root, tracking_uri):
    """List the sweep ids of an experiment, newest first."""
    from transfer_core.sweep import find_sweeps
    from transfer_core.track import existing_experiment

    client = open_context(tracking_uri, data_root).client
    for sweep_id in find_sweeps(client, existing_experiment(client, experiment or DEFAULT_EXPERIMENT)):
        click.echo(sweep_id)


@main.command("analyze")
@experiment_option
@click.option("--sweep", "sweep_id", type=TEXT, default=None,
              help="Sweep id to analyse (see `transfer-core sweeps`). May be left out when the experiment has one "
                   "sweep.")
@click.option("--output", type=Choice(list(OUTPUTS)), default=None, show_default=default(AnalysisOptions, "output"),
              help="Per-example output the influences are fitted to: margin (true-class logit minus the largest "
                   "other), prob (true-class probability) or correct (then class influence = effect on accuracy).")
@click.option("--bootstrap", type=IntRange(min=0), default=None, show_default=default(AnalysisOptions, "bootstrap"),
              help="Bootstrap resamples of the runs for the intervals (0, or at least 20); 0 uses normal intervals "
                   "from Welch standard errors.")
@click.option("--min-runs", type=IntRange(min=2), default=None, show_default=default(AnalysisOptions, "min_runs"),
              help="Each source class must be kept in, and left out of, at least this many runs.")
@click.option("--confidence", type=FloatRange(0.5, 1, min_open=True, max_open=True), default=None,
              show_default=default(AnalysisOptions, "confidence"), help="Confidence level of every interval.")
@click.option("--seed", type=IntRange(min=0), default=None, show_default=default(AnalysisOptions, "seed"),
              help="Seed of the bootstrap, split halves and held-out runs.")
@click.option("--feature-neighbours/--no-feature-neighbours", default=None,
              show_default="on" if AnalysisOptions().feature_neighbours else "off",
              help="Also check leakage candidates by nearest neighbours in a backbone's feature space (uses a "
                   "logged checkpoint, else pretrains one backbone on the whole source).")
@store_options
@click.option("--recompute/--reuse", default=False, show_default=True,
              help="By default a FINISHED analysis of the same runs with the same options is reused (so reruns "
                   "of a script resume its counterfactuals); --recompute logs a new analysis run anyway.")
@progress_option
@friendly_errors
def analyze_command(experiment, sweep_id, output, bootstrap, min_runs, confidence, seed, feature_neighbours,
                    data_root, tracking_uri, recompute, progress):
    """Fit class influences from a sweep's FINISHED runs and log the findings as an analysis run.

    Positive influence = including the source class helps the target. Logs class_influence.csv,
    influence_matrix.npy, heatmap, image grids, leakage, misleading classes, sub-populations and
    one HTML report, whose path is printed at the end.
    """
    from transfer_core.analysis import analyze

    options = AnalysisOptions(**given(output=output, bootstrap=bootstrap, min_runs=min_runs, confidence=confidence,
                                      seed=seed, feature_neighbours=feature_neighbours))
    result = analyze(experiment or DEFAULT_EXPERIMENT, sweep_id, options, ctx=open_context(tracking_uri, data_root,
                                                                                            progress=progress),
                     run_id=invocation_run_id(), recompute=recompute)
    top, bottom = result.ranking.iloc[0], result.ranking.iloc[-1]
    if result.reused:
        click.echo(f"reusing analysis run {result.run_id}: the same {result.sweep_id} runs with the same options "
                   "(--recompute makes a new one)")
    click.echo(f"analysis run {result.run_id} of sweep {result.sweep_id} FINISHED: most helpful class "
               f"{top.class_name} ({top.influence:+.4g}), most detrimental {bottom.class_name} "
               f"({bottom.influence:+.4g}); positive = including the class helps")
    click.echo(f"report: {result.report_path}")


@main.command("counterfactual")
@experiment_option
@click.option("--analysis", "analysis_run_id", type=TEXT, default=None,
              help="Analysis run whose class ranking (class_influence.csv) to check. Default: the experiment's "
                   "latest FINISHED analysis run.")
@click.option("--orders", type=TEXT, default=None, show_default=default(CounterfactualPlan, "orders"),
              help="Removal orders, comma-separated: bottom (the k most detrimental classes), top (the k most "
                   "helpful), random (k random classes, a baseline).")
@click.option("--ks", type=TEXT, default=None, show_default=default(CounterfactualPlan, "ks"),
              help="Numbers of removed classes, comma-separated; 0 (the full source) is always included.")
@click.option("--seeds", type=IntRange(min=1), default=None, show_default=default(CounterfactualPlan, "n_seeds"),
              help="Training seeds per grid point, fixed in the plan; confidence intervals are over seeds.")
@click.option("--profile", type=TEXT, default=None,
              help="Train with this profile instead of the config of the analysed sweep's runs (the default).")
@set_option
@click.option("--transfer-mode", type=Choice(["fixed", "full"]), default=None,
              help="fixed (frozen backbone in eval mode + linear head) or full (all weights train). Default: the "
                   "analysed sweep's.")
@transfer_params_option
@executor_options
@evidence_options
@store_options
@progress_option
@friendly_errors
def counterfactual_command(experiment, analysis_run_id, orders, ks, seeds, profile, overrides, transfer_mode,
                           transfer_params_from, executor, workers, ray_address, ray_cpus_per_run, ray_gpus_per_run,
                           pack, compile_, min_seeds, stability_threshold, data_root, tracking_uri, progress):
    """Retrain without the classes an analysis ranks most detrimental / helpful / at random.

    Classes are removed by the analysis's validation ranking (fitted on one half of the
    validation split); the other half chooses k and must show the gain before a pruned source
    is champion; test accuracy is reported, never used to choose. Each (order, k, seed) is one
    child run of a counterfactual run, which gets a plot of target test accuracy against k,
    tables, paired tests and the selection. Rerunning the same command trains only the missing
    points; two commands at once share the grid without training a point twice.

    The plan (orders, ks, seeds) is fixed when it starts. Another plan on the same analysis is
    another counterfactual run: it reuses the points already trained, and it is another look at
    the selection half, which may spend a smaller share of the error rate (README, "Every look
    counts"). The command refuses settings that carve another validation split than the analysis's.
    """
    from transfer_core.counterfactual import EvidenceRule, counterfactual_from_analysis
    from transfer_core.counterfactual.grid import parse_list
    from transfer_core.tune import recipe_from

    plan = CounterfactualPlan(**given(orders=parse_list(orders, str, "--orders") if orders else None,
                                      ks=parse_list(ks, int, "--ks") if ks else None, n_seeds=seeds))
    execution = execution_settings(executor, workers, ray_address, ray_cpus_per_run, ray_gpus_per_run, pack, compile_)
    experiment = experiment or DEFAULT_EXPERIMENT
    ctx = open_context(tracking_uri, data_root, execution, progress)
    recipe = recipe_from(ctx.client, transfer_params_from, experiment, transfer_mode)
    outcome = counterfactual_from_analysis(experiment, plan, ctx=ctx, analysis_run_id=analysis_run_id,
                                           profile=profile, overrides=overrides_of(overrides, transfer_mode),
                                           recipe=recipe, invocation_run_id=invocation_run_id(),
                                           rule=EvidenceRule(**given(min_seeds=min_seeds)),
                                           **given(stability_threshold=stability_threshold))
    for warning in outcome.warnings:
        click.echo(f"Warning: {warning}", err=True)
    runs = outcome.runs
    click.echo(f"counterfactual {runs.counterfactual_id} (run {runs.parent_run_id}) of analysis "
               f"{outcome.analysis_run_id}: {len(runs.table)} runs ({runs.n_trained} trained here, "
               f"{len(runs.table) - runs.n_trained} reused or trained elsewhere); look "
               f"{outcome.selection.look} at the selection half\n{outcome.selection.describe()}")


@main.command("register")
@experiment_option
@click.option("--counterfactual", "counterfactual_run_id", type=TEXT, default=None,
              help="Counterfactual run whose chosen model to register. Default: the experiment's latest "
                   "FINISHED counterfactual run.")
@click.option("--name", type=TEXT, default=None, help="Registered model name. Default: <experiment>-target.")
@evidence_options
@store_options
@friendly_errors
def register_command(experiment, counterfactual_run_id, name, min_seeds, stability_threshold, data_root,
                     tracking_uri):
    """Register the champion target model (alias `champion`) in the MLflow Model Registry.

    The decision is recomputed from the counterfactual's logged runs, never read from a stored
    flag: the pruned source's model becomes champion only when its paired gain on the held-out
    half of the validation split has a confidence interval above zero, over at least --min-seeds
    seeds fixed in the plan, at the level its look at that half may spend; otherwise the
    full-source model does, and the command says why in one sentence.
    """
    from transfer_core.counterfactual import EvidenceRule
    from transfer_core.registry import latest_counterfactual_run, register_champion

    ctx = open_context(tracking_uri, data_root)
    run_id = counterfactual_run_id or latest_counterfactual_run(ctx.client, experiment or DEFAULT_EXPERIMENT)
    result = register_champion(run_id, ctx=ctx, name=name, run_id=invocation_run_id(),
                               rule=EvidenceRule(**given(min_seeds=min_seeds)),
                               **given(stability_threshold=stability_threshold))
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    click.echo(f"{result.message}\nregistered {result.name} version {result.version}: {result.uri}")


@main.command("main")
@click.option("--settings", "settings_file", type=TEXT, default=None, metavar="NAME|PATH",
              help=f"Pipeline settings: a named study ({', '.join(study_names())}) or a path to a .toml file of "
                   "PipelineSettings fields; the options below override it. Unset: the main job's defaults.")
@settings_options(PipelineSettings)
@click.option("--set", "set_items", multiple=True, metavar="FIELD=VALUE",
              help="Config overrides added to --overrides, e.g. --set pretrain.epochs=2. Repeatable.")
@executor_options(workers=False)
@store_options
@progress_option
@friendly_errors
def main_job(settings_file, set_items, executor, ray_address, ray_cpus_per_run, ray_gpus_per_run, pack, compile_,
             data_root, tracking_uri, progress, **fields):
    """The pipeline: tune -> sweep -> analyze -> counterfactual -> register (-> publish), reusing what is done.

    Every step is its own MLflow run; a rerun trains nothing it has, and a code change recomputes
    the steps whose computing code changed (README, "The pipeline"). `mlflow run .` runs this
    command; `--settings cifar100_to_cifar10` runs the study behind the README's results.
    """
    from transfer_core.workflow import run_pipeline

    if set_items:
        base = PipelineSettings.load(settings_file).overrides if fields.get("overrides") is None else \
            tuple(t for t in fields["overrides"].split(",") if t.strip())
        fields["overrides"] = (*base, *(f"{k}={v}" for k, v in merge_overrides(set_items).items()))
    settings = PipelineSettings.load(settings_file, **given(**fields))
    execution = execution_settings(executor, settings.workers, ray_address, ray_cpus_per_run, ray_gpus_per_run,
                                   pack, compile_)
    ctx = open_context(tracking_uri, data_root, execution, progress)
    result = run_pipeline(settings, ctx, echo=click.echo, invocation_run_id=invocation_run_id())
    click.echo(result.where_to_look(ctx.tracking_uri))


@main.command("publish")
@experiment_option
@click.option("--out", "out_dir", type=TEXT, default="docs/results", show_default=True,
              help="Folder to write RESULTS.md, the figures and the tables into (files of the same name are replaced).")
@click.option("--analysis", "analysis_run_id", type=TEXT, default=None,
              help="Analysis run to publish. Default: the experiment's latest FINISHED analysis run.")
@click.option("--counterfactual", "counterfactual_run_id", type=TEXT, default=None,
              help="Counterfactual run to publish. Default: the latest FINISHED one made from that analysis run.")
@click.option("--top-k", type=IntRange(min=1), default=10, show_default=True,
              help="Most helpful and most detrimental classes listed, overall and per target class.")
@click.option("--subpopulation", type=TEXT, default=None, metavar="TARGET:SOURCE",
              help="Sub-population to show, e.g. automobile:pickup_truck. Default: the group with the largest "
                   "share of its target class (at least 8 images).")
@store_options
@friendly_errors
def publish_command(experiment, out_dir, analysis_run_id, counterfactual_run_id, top_k, subpopulation, data_root,
                    tracking_uri):
    """Write an experiment's results (figures, tables, RESULTS.md) into a folder for a README.

    Reads the analysis run, the counterfactual run made from it and the tune run whose recipe
    the sweep used (the sweep's tune_run_id tag); every table in RESULTS.md names the run and
    artifact it comes from.
    """
    from transfer_core.workflow.publish import publish

    path = publish(experiment or DEFAULT_EXPERIMENT, out_dir, ctx=open_context(tracking_uri, data_root),
                   analysis_run_id=analysis_run_id, counterfactual_run_id=counterfactual_run_id, top_k=top_k,
                   subpopulation=subpopulation)
    click.echo(f"results written to {path}")


@main.command("links")
@click.option("--tracking-uri", type=TEXT, default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db.")
@click.option("--base", type=TEXT, default="http://127.0.0.1:5000", show_default=True,
              help="Where the MLflow UI answers.")
@friendly_errors
def links_command(tracking_uri, base):
    """Print the MLflow UI links of every experiment this tool wrote: its runs in Model training mode,
    and the saved views a pipeline run made (every trained model; accuracy against k). Writes nothing."""
    from transfer_core.track.store import default_tracking_uri, sqlite_path
    from transfer_core.track.views import experiment_links

    uri = tracking_uri or default_tracking_uri(create=False)
    store = sqlite_path(uri)
    if store is not None and not store.is_file():
        raise click.ClickException(f"there is no MLflow store at {store} yet; run `make run` (or a transfer-core "
                                   "command) first, or pass --tracking-uri")
    for line in experiment_links(open_context(uri, None).client, base):
        click.echo(line)
