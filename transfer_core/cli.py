"""The ``transfer-core`` command line. Each command parses, validates, and calls the library.

The MLproject entry points call these same commands, so ``mlflow run . -e NAME`` and
``transfer-core NAME`` behave identically.
"""
from __future__ import annotations

import functools
import logging
import os
import sys

import click

from .config import ConfigError, build_config, parse_overrides, profile_names


def config_options(fn):
    """Options every command that builds a RunConfig shares."""
    options = [
        click.option("--profile", default="quick", show_default=True,
                     help=f"Named experiment config from experiments/profiles ({', '.join(profile_names())}) "
                          "or a path to a .toml file."),
        click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
                     help="Override any config field, e.g. --set pretrain.epochs=4 --set data.resolution=32. "
                          "Repeatable; a comma-separated list also works."),
        click.option("--transfer-mode", type=str, default=None,
                     help="fixed (frozen backbone in eval mode + linear head) or full (all weights "
                          "train). Default: the profile's."),
        click.option("--alpha", type=str, default=None,
                     help="Share of source classes each model keeps, in (0, 1]. Default: the profile's (0.5)."),
        click.option("--sweep-seed", type=str, default=None,
                     help="Seed of the class masks: mask i is a pure function of (sweep seed, i). Default 0."),
        click.option("--data-root", type=click.Path(), default=None, envvar="TRANSFER_CORE_DATA",
                     help="Folder with cifar10.tar.gz / cifar100.tar.gz or their extracted trees "
                          "[env: TRANSFER_CORE_DATA]. Unset: torchvision downloads CIFAR."),
        click.option("--experiment", default="transfer_core", show_default=True, help="MLflow experiment name."),
        click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
                     help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]. Default: sqlite store "
                          "mlruns/mlflow.db with artifacts under mlruns/."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def resolve_config(profile, overrides, transfer_mode=None, alpha=None, sweep_seed=None, extra=None):
    """Profile + ``--set`` overrides + the dedicated options, validated once."""
    merged = {}
    for item in overrides:
        merged.update(parse_overrides(item))
    for key, value in (("transfer.mode", transfer_mode), ("alpha", alpha), ("sweep_seed", sweep_seed)):
        if value not in (None, ""):
            merged[key] = value
    merged.update(extra or {})
    return build_config(profile, merged)


def friendly_errors(fn):
    """Turn library errors into one clear sentence and exit status 2, with no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def transfer_params_option(fn):
    """``--transfer-params-from RUN_ID|latest``: run with the recipe a ``tune`` run found."""
    return click.option(
        "--transfer-params-from", "transfer_params_from", default=None, metavar="RUN_ID|latest",
        help="Use the best transfer hyperparameters of a `transfer-core tune` run: its MLflow run id, or "
             "'latest' for the experiment's latest FINISHED tune run. They override the profile's and "
             "--set's transfer values and are logged as params on every run.")(fn)


def transfer_params_overrides(transfer_params_from, experiment, tracking_uri=None, transfer_mode=None):
    """Config overrides for ``--transfer-params-from`` ({} when unset), e.g.
    ``resolve_config(..., extra=transfer_params_overrides(transfer_params_from, experiment, tracking_uri,
    transfer_mode))``. Refuses a recipe tuned for the other transfer mode than ``--transfer-mode``.
    """
    if transfer_params_from in (None, ""):
        return {}
    from mlflow.tracking import MlflowClient

    from .tracking import setup_tracking
    from .tuning import tuned_overrides

    setup_tracking(tracking_uri)
    found = MlflowClient().get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError(f"experiment {experiment!r} does not exist, so it has no tune run; run "
                          "`transfer-core tune` first or pass the right --experiment")
    run_id = None if transfer_params_from.strip().lower() == "latest" else transfer_params_from.strip()
    overrides = tuned_overrides(found.experiment_id, run_id)
    tuned_mode = overrides.get("transfer.mode")
    if transfer_mode not in (None, "") and tuned_mode not in (None, transfer_mode):
        raise ConfigError(f"the tune run tuned the {tuned_mode!r} transfer mode but --transfer-mode is "
                          f"{transfer_mode!r}; drop --transfer-mode or tune the {transfer_mode!r} mode")
    return overrides


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@click.option("--index", type=str, default="0", show_default=True,
              help="Model index: with the sweep seed it fixes the class mask and the training seed.")
@click.option("--mask", "mask_file", type=click.Path(), default=None,
              help="A .npy boolean mask (one entry per source class) to use instead of the random one.")
@click.option("--log-checkpoint/--no-log-checkpoint", default=True, show_default=True,
              help="Log the transferred model as model.pt (about 0.3 MB for the quick profile).")
@friendly_errors
def subset_run(profile, overrides, transfer_mode, alpha, sweep_seed, data_root, experiment, tracking_uri,
               index, mask_file, log_checkpoint):
    """Pretrain on one class subset, transfer to the target, log it all as one MLflow run."""
    import numpy as np

    from .config import parse_value
    from .runner import SubsetRunner
    from .tracking import setup_tracking

    config = resolve_config(profile, overrides, transfer_mode, alpha, sweep_seed)
    index = parse_value("--index", index, int)
    if index < 0:
        raise ConfigError(f"--index must be >= 0, got {index}")
    mask = None
    if mask_file:
        try:
            mask = np.load(mask_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read mask file {mask_file} ({exc}); give a .npy boolean array") from None
    setup_tracking(tracking_uri)
    runner = SubsetRunner(config, experiment, data_root)
    run_id, result = runner.run(index, mask=mask, run_id=os.environ.get("MLFLOW_RUN_ID"),
                                log_checkpoint=log_checkpoint)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in {**result.metrics, **result.timings}.items())
    click.echo(f"run {run_id} FINISHED: {metrics}")


@main.command("tune")
@config_options
@click.option("--n-trials", type=str, default="20", show_default=True,
              help="Trials this call adds to the study (the study's first trial is the config's own recipe).")
@click.option("--total-trials", type=str, default=None,
              help="Instead of --n-trials: add only the trials the study lacks to hold this many finished ones, "
                   "so rerunning the command after an interruption completes the study and then adds none "
                   "(the best params, and so the sweep they feed, stay the same).")
@click.option("--study-name", default=None,
              help="Optuna study to create or extend. Default: <profile>-<mode>-<config hash>, so rerunning "
                   "the same command adds trials to the same study.")
@click.option("--storage", default=None,
              help="Where the study lives: unset = journal file mlruns/optuna/<study>.journal (resumable, safe "
                   "for several processes on one machine); a *.journal path; or an RDB URL such as "
                   "postgresql://user:pw@host/db shared by several machines.")
@click.option("--space", "space", multiple=True, metavar="SPEC",
              help="Search space, e.g. 'lr=0.001:1:log;epochs=2:30;batch_size=64,128' (LOW:HIGH[:log] is a "
                   "range, a comma list a choice; names: lr, weight_decay, epochs, label_smoothing, "
                   "batch_size). Repeatable. Default: lr, weight_decay, epochs, label_smoothing (+ batch_size "
                   "in full mode).")
@click.option("--backbone-index", type=str, default=None,
              help="Pretrain the shared backbone on the classes of sweep mask INDEX. Default: every source class.")
@click.option("--timeout", type=str, default=None, help="Stop starting new trials after this many seconds.")
@click.option("--sampler-seed", type=str, default=None,
              help="Seed of the TPE sampler, for a reproducible search. Default: fresh (best when several "
                   "processes share a study).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@friendly_errors
def tune_command(profile, overrides, transfer_mode, alpha, sweep_seed, data_root, experiment, tracking_uri,
                 n_trials, total_trials, study_name, storage, space, backbone_index, timeout, sampler_seed, progress):
    """Tune the transfer hyperparameters with Optuna on the target validation split.

    One backbone is pretrained and logged, then every trial transfers it with other
    hyperparameters; the study is one MLflow run with one child run per trial. Hand the
    result to other commands with --transfer-params-from RUN_ID (or latest).
    """
    from .config import parse_value
    from .search_space import SearchSpace
    from .tracking import setup_tracking
    from .tuning import TuneSettings, tune

    config = resolve_config(profile, overrides, transfer_mode, alpha, sweep_seed)
    optional = {"--backbone-index": (backbone_index, int), "--timeout": (timeout, float),
                "--total-trials": (total_trials, int), "--sampler-seed": (sampler_seed, int)}
    values = {k: None if v in (None, "") else parse_value(k, v, kind) for k, (v, kind) in optional.items()}
    space_specs = [s for s in space if s.strip().lower() != "default"]
    settings = TuneSettings(
        n_trials=parse_value("--n-trials", n_trials, int), total_trials=values["--total-trials"],
        study_name=study_name or None, storage=storage or None,
        space=SearchSpace.parse(space_specs) if space_specs else None,
        backbone_index=values["--backbone-index"], timeout_s=values["--timeout"],
        sampler_seed=values["--sampler-seed"]).validate(config)
    setup_tracking(tracking_uri)
    result = tune(config, settings, experiment, data_root, profile=profile,
                  run_id=os.environ.get("MLFLOW_RUN_ID"), progress=progress)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in result.counts.items())
    default = "n/a" if result.default_value is None else f"{result.default_value:.4f}"
    recipe = ", ".join(f"{k}={v}" for k, v in result.best_params.items())
    click.echo(f"study {result.study_name} ({result.storage}): {counts}\n"
               f"best target_val_acc={result.best_value:.4f} (default recipe {default}) with {recipe}\n"
               f"tune run {result.run_id}; use it with --transfer-params-from {result.run_id}")


@main.command("sweep")
@config_options
@transfer_params_option
@click.option("--n-models", required=True, type=str,
              help="Models (subset runs) the sweep should have. Rerunning trains only the missing ones; a larger "
                   "number grows the sweep and reuses the runs it has.")
@click.option("--workers", type=str, default="1", show_default=True,
              help="Local worker processes; each loads the data once and gets cores/workers torch threads.")
@click.option("--executor", type=str, default="local", show_default=True,
              help="local (worker processes on this machine) or ray (one Ray task per model; needs "
                   "pip install 'transfer-core[ray]').")
@click.option("--ray-address", default=None,
              help="Ray cluster to use, e.g. 10.0.0.5:6379 or auto. Unset: $RAY_ADDRESS if set, else a new "
                   "local Ray instance.")
@click.option("--ray-cpus-per-run", type=str, default="1", show_default=True, help="CPUs each Ray task reserves.")
@click.option("--ray-gpus-per-run", type=str, default="0", show_default=True,
              help="GPUs each Ray task reserves; a fraction (0.25) lets several small models share one card.")
@click.option("--sweep-id", default=None,
              help="Name the sweep yourself. Default: sweep-<hash of the config>, so the same command always "
                   "means the same sweep. A stored sweep of that name must have the same config.")
@click.option("--log-checkpoint/--no-log-checkpoint", default=False, show_default=True,
              help="Log each transferred model as model.pt (about 0.3 MB per run for the quick profile).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@friendly_errors
def sweep_command(profile, overrides, transfer_mode, alpha, sweep_seed, data_root, experiment, tracking_uri,
                  transfer_params_from, n_models, workers, executor, ray_address, ray_cpus_per_run,
                  ray_gpus_per_run, sweep_id, log_checkpoint, progress):
    """Train N subset runs of one config as one sweep: resumable, parallel, or on Ray.

    The sweep is a parent MLflow run with one child run per model index. Interrupt it
    at any time; the same command later trains only the indices without a FINISHED run.
    """
    from .config import parse_value
    from .execution import check_executor
    from .sweep import SweepIncomplete, sweep_with_summary

    config = resolve_config(profile, overrides, transfer_mode, alpha, sweep_seed,
                            extra=transfer_params_overrides(transfer_params_from, experiment, tracking_uri,
                                                            transfer_mode))
    workers = parse_value("--workers", workers, int)
    check_executor(executor, workers)
    summary = sweep_with_summary(
        config, parse_value("--n-models", n_models, int), experiment=experiment, workers=workers,
        executor=executor, ray_address=ray_address or None,
        ray_cpus_per_run=parse_value("--ray-cpus-per-run", ray_cpus_per_run, float),
        ray_gpus_per_run=parse_value("--ray-gpus-per-run", ray_gpus_per_run, float), data_root=data_root,
        tracking_uri=tracking_uri, sweep_id=sweep_id or None, log_checkpoint=log_checkpoint,
        invocation_run_id=os.environ.get("MLFLOW_RUN_ID"), progress=progress)
    click.echo(f"sweep {summary.sweep_id} (parent run {summary.parent_run_id}): {summary.n_finished} of "
               f"{summary.n_models} runs FINISHED ({summary.n_reused} reused, {summary.n_trained} trained, "
               f"{summary.n_failed} failed); wall time per run median {summary.run_wall_median_s:.1f} s, "
               f"p90 {summary.run_wall_p90_s:.1f} s; total {summary.total_wall_s:.1f} s")
    if not summary.complete:
        raise SweepIncomplete(summary)


@main.command("sweeps")
@click.option("--experiment", default="transfer_core", show_default=True, help="MLflow experiment name.")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]. Default: sqlite store mlruns/mlflow.db.")
@friendly_errors
def sweeps_command(experiment, tracking_uri):
    """List the sweep ids of an experiment, newest first."""
    from mlflow.tracking import MlflowClient

    from .sweep import find_sweeps
    from .tracking import setup_tracking

    setup_tracking(tracking_uri)
    found = MlflowClient().get_experiment_by_name(experiment)
    for sweep_id in find_sweeps(found.experiment_id) if found else []:
        click.echo(sweep_id)


@main.command("counterfactual")
@click.option("--experiment", default="transfer_core", show_default=True, help="MLflow experiment name.")
@click.option("--analysis", "analysis_run_id", default=None,
              help="Analysis run whose class ranking (class_influence.csv) to check. Default: the experiment's "
                   "latest FINISHED analysis run.")
@click.option("--orders", default="bottom,top,random", show_default=True,
              help="Removal orders, comma-separated: bottom (the k most detrimental classes), top (the k most "
                   "helpful), random (k random classes, a baseline).")
@click.option("--ks", default="0,5,10,20", show_default=True,
              help="Numbers of removed classes, comma-separated; 0 (the full source) is always included.")
@click.option("--seeds", default="3", show_default=True,
              help="Training seeds per grid point; confidence intervals are over seeds.")
@click.option("--profile", default=None,
              help="Train with this profile instead of the config of the analysed sweep's runs (the default).")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a config field on top of the sweep's config, e.g. --set transfer.epochs=20.")
@transfer_params_option
@click.option("--data-root", type=click.Path(), default=None, envvar="TRANSFER_CORE_DATA",
              help="Folder with the CIFAR archives or trees [env: TRANSFER_CORE_DATA].")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]. Default: sqlite store mlruns/mlflow.db.")
@click.option("--workers", default="1", show_default=True,
              help="Processes training grid points at once; each loads the data once and gets cores/workers "
                   "torch threads (2 is best on a shared 2-core machine).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@friendly_errors
def counterfactual_command(experiment, analysis_run_id, orders, ks, seeds, profile, overrides,
                           transfer_params_from, data_root, tracking_uri, workers, progress):
    """Retrain without the classes an analysis ranks most detrimental / helpful / at random.

    Each (order, k, seed) is one child run of a counterfactual parent run, which gets a
    plot of target test accuracy against k, tables, and the pruned source chosen on
    validation accuracy. Rerunning the same command trains only the missing points.
    """
    from .config import parse_value
    from .counterfactual import CounterfactualPlan, parse_list
    from .counterfactual_job import counterfactual_from_analysis
    from .tracking import setup_tracking

    plan = CounterfactualPlan(parse_list(orders, str, "--orders"), parse_list(ks, int, "--ks"),
                              parse_value("--seeds", seeds, int))
    merged = {}
    for item in overrides:
        merged.update(parse_overrides(item))
    merged.update(transfer_params_overrides(transfer_params_from, experiment, tracking_uri))
    setup_tracking(tracking_uri)
    outcome = counterfactual_from_analysis(experiment, plan, analysis_run_id=analysis_run_id or None,
                                           profile=profile or None, overrides=merged, data_root=data_root,
                                           parent_run_id=os.environ.get("MLFLOW_RUN_ID"),
                                           workers=parse_value("--workers", workers, int), progress=progress)
    runs = outcome.runs
    click.echo(f"counterfactual {runs.counterfactual_id} (run {runs.parent_run_id}) of analysis "
               f"{outcome.analysis_run_id}: {len(runs.table)} runs ({runs.n_trained} trained, "
               f"{len(runs.table) - runs.n_trained} reused)\n{outcome.selection.describe()}")


@main.command("register")
@click.option("--experiment", default="transfer_core", show_default=True, help="MLflow experiment name.")
@click.option("--counterfactual", "counterfactual_run_id", default=None,
              help="Counterfactual run whose chosen model to register. Default: the experiment's latest "
                   "FINISHED counterfactual run.")
@click.option("--name", default=None, help="Registered model name. Default: <experiment>-target.")
@click.option("--data-root", type=click.Path(), default=None, envvar="TRANSFER_CORE_DATA",
              help="Folder with the CIFAR archives or trees [env: TRANSFER_CORE_DATA] (for the input example).")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]. Default: sqlite store mlruns/mlflow.db.")
@friendly_errors
def register_command(experiment, counterfactual_run_id, name, data_root, tracking_uri):
    """Register the champion target model (alias `champion`) in the MLflow Model Registry.

    The pruned source's model becomes champion only if it beat the full source on
    validation; otherwise the full-source model does, and the command says so.
    """
    from .registry import latest_counterfactual_run, register_champion
    from .tracking import setup_tracking

    setup_tracking(tracking_uri)
    run_id = counterfactual_run_id or latest_counterfactual_run(experiment)
    result = register_champion(run_id, data_root=data_root, name=name or None,
                               run_id=os.environ.get("MLFLOW_RUN_ID"))
    click.echo(f"{result.message}\nregistered {result.name} version {result.version}: {result.uri}")


@main.command("main")
@click.option("--profile", default="quick", show_default=True,
              help=f"Named experiment config ({', '.join(profile_names())}) or a .toml path, for every step.")
@click.option("--experiment", default="transfer_core", show_default=True, help="MLflow experiment name.")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a config field in every step, e.g. --set pretrain.epochs=4. Repeatable.")
@click.option("--tune-trials", default="8", show_default=True, help="Optuna trials of the tune step; 0 skips it.")
@click.option("--n-models", default="40", show_default=True, help="Subset runs in the sweep.")
@click.option("--workers", default="2", show_default=True,
              help="Worker processes of the sweep and the counterfactual (1 torch thread each on 2 cores).")
@click.option("--orders", default="bottom,top,random", show_default=True, help="Counterfactual removal orders.")
@click.option("--ks", default="0,10,25", show_default=True, help="Counterfactual numbers of removed classes.")
@click.option("--seeds", default="2", show_default=True, help="Counterfactual seeds per grid point.")
@click.option("--data-root", type=click.Path(), default=None, envvar="TRANSFER_CORE_DATA",
              help="Folder with the CIFAR archives or trees [env: TRANSFER_CORE_DATA].")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]. Default: sqlite store mlruns/mlflow.db.")
@friendly_errors
def main_job(profile, experiment, overrides, tune_trials, n_models, workers, orders, ks, seeds, data_root,
             tracking_uri):
    """The main job: tune -> sweep -> analyze -> counterfactual -> register, reusing finished steps.

    Each step is an MLproject entry point run by mlflow.run with the local environment; a
    step whose FINISHED run has the same parameters, config and data is reused. At the end
    it prints the MLflow UI command, the analysis report and the registered model URI.
    """
    from mlflow.entities import RunTag

    from .config import parse_value
    from .tracking import setup_tracking
    from .workflow import MainSettings, Workflow, start_main_run

    merged = {}
    for item in overrides:
        merged.update(parse_overrides(item))
    settings = MainSettings(
        profile=profile, experiment=experiment, overrides=",".join(f"{k}={v}" for k, v in merged.items()),
        tune_trials=parse_value("--tune-trials", tune_trials, int), n_models=parse_value("--n-models", n_models, int),
        workers=parse_value("--workers", workers, int), orders=orders, ks=ks, seeds=parse_value("--seeds", seeds, int))
    if data_root:
        os.environ["TRANSFER_CORE_DATA"] = str(data_root)  # the steps run in subprocesses
    uri = setup_tracking(tracking_uri)
    workflow = Workflow(settings, data_root, echo=click.echo)
    with start_main_run(workflow.client, workflow.experiment_id) as run:
        result = workflow.run()
        mlflow_tags = {f"step.{k}": v for k, v in result.steps.items()}
        workflow.client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in {
            **mlflow_tags, "model_uri": result.model_uri, "report_path": result.report_path}.items()])
    click.echo(result.where_to_look(uri))


@main.command("analyze")
@click.option("--experiment", default="transfer_core", show_default=True, help="MLflow experiment of the sweep.")
@click.option("--sweep", "sweep_id", default=None,
              help="Sweep id to analyse (see `transfer-core sweeps`). May be left out when the experiment has one sweep.")
@click.option("--output", default="margin", show_default=True,
              help="Per-example output the influences are fitted to: margin (true-class logit minus the largest "
                   "other), prob (true-class probability) or correct (then class influence = effect on accuracy).")
@click.option("--bootstrap", default="100", show_default=True,
              help="Bootstrap resamples of the runs for the intervals (at least 20); 0 uses normal intervals "
                   "from Welch standard errors.")
@click.option("--min-runs", default="5", show_default=True,
              help="Each source class must be kept in, and left out of, at least this many runs.")
@click.option("--confidence", default="0.95", show_default=True, help="Confidence level of every interval.")
@click.option("--seed", default="0", show_default=True, help="Seed of the bootstrap, split halves and held-out runs.")
@click.option("--feature-neighbours/--no-feature-neighbours", default=True, show_default=True,
              help="Also check leakage candidates by nearest neighbours in a backbone's feature space (uses a "
                   "logged checkpoint, else pretrains one backbone on the whole source).")
@click.option("--data-root", type=click.Path(), default=None, envvar="TRANSFER_CORE_DATA",
              help="Folder with the CIFAR archives or trees [env: TRANSFER_CORE_DATA]; for the example images.")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]. Default: sqlite store mlruns/mlflow.db.")
@click.option("--recompute/--reuse", default=False, show_default=True,
              help="By default a FINISHED analysis of the same runs with the same options is reused (so reruns "
                   "of a script resume its counterfactuals); --recompute logs a new analysis run anyway.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@friendly_errors
def analyze_command(experiment, sweep_id, output, bootstrap, min_runs, confidence, seed, feature_neighbours,
                    data_root, tracking_uri, recompute, progress):
    """Fit class influences from a sweep's FINISHED runs and log the findings as an analysis run.

    Positive influence = including the source class helps the target. Logs class_influence.csv,
    influence_matrix.npy, heatmap, image grids, leakage, misleading classes, sub-populations and
    one HTML report, whose path is printed at the end.
    """
    from .analysis import AnalysisOptions, analyze
    from .config import parse_value
    from .tracking import setup_tracking

    options = AnalysisOptions(
        output=output.strip(), bootstrap=parse_value("--bootstrap", bootstrap, int),
        min_runs=parse_value("--min-runs", min_runs, int), confidence=parse_value("--confidence", confidence, float),
        seed=parse_value("--seed", seed, int), feature_neighbours=feature_neighbours).validate()
    setup_tracking(tracking_uri)
    result = analyze(experiment, sweep_id or None, options, data_root=data_root,
                     run_id=os.environ.get("MLFLOW_RUN_ID"), progress=progress, recompute=recompute)
    top = result.ranking.iloc[0]
    bottom = result.ranking.iloc[-1]
    if result.reused:
        click.echo(f"reusing analysis run {result.run_id}: the same {result.sweep_id} runs with the same options "
                   "(--recompute makes a new one)")
    click.echo(f"analysis run {result.run_id} of sweep {result.sweep_id} FINISHED: most helpful class "
               f"{top.class_name} ({top.influence:+.4g}), most detrimental {bottom.class_name} "
               f"({bottom.influence:+.4g}); positive = including the class helps")
    click.echo(f"report: {result.report_path}")


@main.command("publish")
@click.option("--experiment", default="transfer_core", show_default=True, help="MLflow experiment name.")
@click.option("--out", "out_dir", default="docs/results", show_default=True, type=click.Path(file_okay=False),
              help="Folder to write RESULTS.md, the figures and the tables into (files of the same name are replaced).")
@click.option("--analysis", "analysis_run_id", default=None,
              help="Analysis run to publish. Default: the experiment's latest FINISHED analysis run.")
@click.option("--counterfactual", "counterfactual_run_id", default=None,
              help="Counterfactual run to publish. Default: the latest FINISHED one made from that analysis run.")
@click.option("--top-k", default="10", show_default=True,
              help="Most helpful and most detrimental classes listed, overall and per target class.")
@click.option("--subpopulation", default=None, metavar="TARGET:SOURCE",
              help="Sub-population to show, e.g. automobile:pickup_truck. Default: the group with the largest "
                   "share of its target class (at least 8 images).")
@click.option("--data-root", type=click.Path(), default=None, envvar="TRANSFER_CORE_DATA",
              help="Folder with the CIFAR archives or trees [env: TRANSFER_CORE_DATA]; for the example images.")
@click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]. Default: sqlite store mlruns/mlflow.db.")
@friendly_errors
def publish_command(experiment, out_dir, analysis_run_id, counterfactual_run_id, top_k, subpopulation, data_root,
                    tracking_uri):
    """Write an experiment's results (figures, tables, RESULTS.md) into a folder for a README.

    Reads the analysis run, the counterfactual run made from it and the tune run whose recipe
    the sweep used; every table in RESULTS.md names the run and artifact it comes from.
    """
    from .config import parse_value
    from .publish import publish
    from .tracking import setup_tracking

    setup_tracking(tracking_uri)
    path = publish(experiment, out_dir, analysis_run_id=analysis_run_id or None,
                   counterfactual_run_id=counterfactual_run_id or None, top_k=parse_value("--top-k", top_k, int),
                   subpopulation=subpopulation or None, data_root=data_root)
    click.echo(f"results written to {path}")


if __name__ == "__main__":
    sys.exit(main())
