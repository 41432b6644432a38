"""Optuna tuning of the transfer recipe on the target validation split's **ranking half**, tracked in MLflow.

:func:`tune` pretrains one source backbone (on every source class, or on the classes of one
sweep index), logs it, and runs an Optuna study whose trials fit only the transfer step on
that backbone. Each trial is scored by target validation accuracy on the ranking half of the
validation split (:func:`~transfer_core.tune.backbone.ranking_half`); the selection half, which
gates the champion, and the test split are never read. In fixed-feature mode the backbone's
features are computed once and a trial trains a linear head on them (about a second); in full
mode a trial fine-tunes a copy.

Trials report validation accuracy after every epoch and a median pruner stops the weak
ones, comparing trials at the same point of their learning-rate schedule
(:mod:`transfer_core.pruning`); a trial whose loss becomes NaN or infinite is pruned with
the reason recorded, and the study goes on. Trial 0 of a new study is the config's own
recipe, so the gain over the default is on record and the best is never worse than it.

Storage: by default a journal file ``optuna/<study>.journal`` beside the MLflow sqlite store
(``mlruns/optuna/`` for the embedded one; resumable, safe for several processes on one
machine); ``storage`` may also be another ``*.journal`` path or an RDB URL
(``postgresql://...``) that machines share. Calling :func:`tune` again with the same study
name adds trials to it; a study made for a different config is refused. With
``total_trials``, a call that has nothing to add reuses the FINISHED tune run of the same
step key instead of logging another.
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from tqdm.auto import tqdm

from transfer_core.config import ConfigError, RunConfig, with_overrides
from transfer_core.data import data_digest
from transfer_core.execute import Context, SubsetRunner
from transfer_core.track import (KIND_TAG, artifact_path, describe_run, get_run_of_kind, latest_run, log_new_params,
                                 run_scope, set_tags)
from transfer_core.track.runs import TUNE
from transfer_core.track.steps import find_step, step_key, step_tags
from transfer_core.track.store import sqlite_path
from transfer_core.train import DivergenceError
from transfer_core.tune.pruning import ScheduleMedianPruner
from transfer_core.tune.settings import TuneSettings
from transfer_core.tune.space import TUNABLE, Choices, SearchSpace
from transfer_core.tune.backbone import BACKBONE_TAG, TrialFitter, backbone_hash, log_backbone, pretrain_backbone, \
    reuse_backbone
from transfer_core.tune.records import BEST_PARAMS_ARTIFACT, STUDY_TAG, TrialRecorder, log_study_summary

log = logging.getLogger(__name__)
DEFAULT_STORAGE_DIR = Path("mlruns") / "optuna"  # for stores that are not a local sqlite file


class StorageError(ConfigError):
    """The Optuna storage cannot be opened, or holds a study made for another config."""


@dataclass
class TuneResult:
    run_id: str  # the parent MLflow run of this call
    study_name: str
    storage: str  # where the study lives (passwords hidden)
    best_params: dict[str, str]  # {"transfer.lr": "0.05", ...}, as in best_params.json
    best_value: float  # best target validation accuracy in the whole study
    default_value: float | None  # validation accuracy of the config's own recipe (trial 0)
    counts: dict[str, int]  # COMPLETE / PRUNED / FAIL trials in the whole study
    reused: bool = False  # the study was complete and its FINISHED run is returned: nothing ran


def study_hash(config: RunConfig, backbone_index: int | None, data: str) -> str:
    """What makes trials comparable (the study's step key): every field except the tuned ones, the
    backbone, the data digest and the tuning code."""
    fixed = {k: v for k, v in config.to_params().items() if k not in TUNABLE}
    return step_key("tune", data=data, code="tune",
                    extra={"params": fixed, "backbone": "all" if backbone_index is None else backbone_index})[:8]


def default_study_name(profile: str, config: RunConfig, backbone_index: int | None, data: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(profile).stem) or "tune"
    return f"{stem}-{config.transfer.mode}-{study_hash(config, backbone_index, data)}"


def default_storage_dir(tracking_uri: str) -> Path:
    """Where journal studies go by default: ``optuna/`` beside a sqlite store, else ``mlruns/optuna``."""
    db = sqlite_path(tracking_uri)
    return db.resolve().parent / "optuna" if db is not None else DEFAULT_STORAGE_DIR


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(storage: str | None, study_name: str, default_dir: Path = DEFAULT_STORAGE_DIR):
    """An Optuna storage and its printable name; raises StorageError if it cannot be opened."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend, JournalStorage

    target = storage or str(default_dir / f"{study_name}.journal")
    try:
        if "://" not in target:  # a journal file: appends under a file lock, so processes can share it
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(target)), target
        if target.startswith("redis://"):
            return JournalStorage(JournalRedisBackend(target)), _hide_password(target)
        # Heartbeats let a restarted study fail and retry trials whose process died.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = RDBStorage(target, heartbeat_interval=60, grace_period=180,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
        return rdb, _hide_password(target)
    except Exception as exc:  # driver missing, server down, bad path: all mean "cannot open"
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"cannot open the Optuna storage {_hide_password(target)!r} ({reason}); give a "
                           "writable *.journal path or a reachable database URL (with its driver "
                           "installed), or leave --storage unset for optuna/ beside the MLflow store") from None


def load_study(settings: TuneSettings, space: SearchSpace, storage, study_name: str, storage_label: str,
               config: RunConfig, data: str) -> optuna.Study:
    """Create the study or load it to add trials; refuse one made for another config."""
    sampler = optuna.samplers.TPESampler(seed=settings.sampler_seed)
    pruner = ScheduleMedianPruner(config.transfer.epochs, n_startup_trials=settings.pruner_startup_trials,
                                  n_warmup_steps=settings.pruner_warmup_epochs)
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    except Exception as exc:
        raise StorageError(f"cannot create or load study {study_name!r} in {storage_label} ({exc}); "
                           "check the storage or choose another --study-name") from None
    wanted = {"config_hash": study_hash(config, settings.backbone_index, data), "transfer.mode": config.transfer.mode,
              "backbone_index": "all" if settings.backbone_index is None else str(settings.backbone_index)}
    found = {k: study.user_attrs.get(k) for k in wanted}
    if found["config_hash"] is None:
        for key, value in wanted.items():
            study.set_user_attr(key, value)
    elif found != wanted:
        raise StorageError(f"study {study_name!r} in {storage_label} was made for another config ({found}, now "
                           f"{wanted}); resume it with the same profile, --set values, mode and backbone, "
                           "or choose another --study-name")
    if not study.trials:  # trial 0: the config's own recipe, the baseline every other trial is compared with
        default = {name: getattr(config.transfer, name.split(".", 1)[1]) for name in space.params}
        outside = [f"{name}={default[name]}" for name, domain in space.params.items()
                   if isinstance(domain, Choices) and default[name] not in domain.values]
        if outside:  # Optuna can try a range value outside its range, but not an unlisted choice
            log.warning("no baseline trial: the default %s is not among the choices", ", ".join(outside))
        else:
            study.enqueue_trial(default, user_attrs={"baseline": True}, skip_if_exists=True)
    return study


def make_objective(space: SearchSpace, base: RunConfig, fitter: TrialFitter, client: MlflowClient,
                   experiment_id: str, parent_run_id: str, study_name: str):
    """The Optuna objective: suggest, fit, report each epoch, prune; one child run per trial."""
    def objective(trial: optuna.Trial) -> float:
        config = with_overrides(base, space.suggest(trial))
        record = TrialRecorder(client, experiment_id, parent_run_id, study_name, trial.number, config)
        trial.set_user_attr("mlflow_run_id", record.run_id)

        def on_epoch(epoch: int, loss: float, val_acc: float) -> None:
            record.epoch(epoch, loss, val_acc)
            trial.report(val_acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: validation accuracy {val_acc:.4f} "
                                         "is below the median of earlier trials")

        def stop(state: str, reason: str) -> None:
            trial.set_user_attr("stop_reason", reason)
            record.finish(state, reason=reason)

        try:
            value = fitter.fit(config, on_epoch)
        except optuna.TrialPruned as exc:
            stop("PRUNED", str(exc))
            raise
        except DivergenceError as exc:  # a NaN/inf loss says "this region is bad": prune, don't crash
            stop("PRUNED", f"diverged: {exc}")
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        except BaseException as exc:
            stop("FAIL", f"{type(exc).__name__}: {exc}")
            raise
        record.finish("COMPLETE", value)
        return value
    return objective


def tune(config: RunConfig, settings: TuneSettings, experiment: str = "transfer_core", *, ctx: Context,
         device=None, profile: str = "tune", run_id: str | None = None) -> TuneResult:
    """Run (or extend) a study; ``run_id`` continues an existing run (e.g. from ``mlflow run``)."""
    with _quiet_optuna():
        return _tune(config, settings, experiment, ctx, device, profile, run_id)


def _study_result(run_id: str, study, study_name: str, storage_label: str, best: dict) -> TuneResult:
    trials = study.get_trials(deepcopy=False)
    baseline = [t.value for t in trials if t.user_attrs.get("baseline") and t.state.name == "COMPLETE"]
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    return TuneResult(run_id, study_name, storage_label, best, study.best_value, baseline[0] if baseline else None,
                      counts)


def _tune(config, settings, experiment, ctx: Context, device, profile, run_id) -> TuneResult:
    if settings.total_trials == 0:
        raise ConfigError("--total-trials 0 asks the study for no trials, so there is nothing to tune; give a "
                          "positive number, or leave tuning out")
    space = settings.search_space(config)
    data = data_digest(config.data, ctx.dirs)
    study_name = settings.study_name or default_study_name(profile, config, settings.backbone_index, data)
    # fail fast, before any training
    storage, storage_label = open_storage(settings.storage, study_name, default_storage_dir(ctx.tracking_uri))
    study = load_study(settings, space, storage, study_name, storage_label, config, data)
    n_trials = settings.n_trials
    client = ctx.client
    key = None
    if settings.total_trials is not None:  # resumable: finish the study, add nothing once it is complete
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        n_trials = max(settings.total_trials - finished, 0)
        log.info("study %s holds %d finished trials; adding %d to reach %d", study_name, finished, n_trials,
                 settings.total_trials)
        key = step_key("tune", config=config, data=data, code="tune",
                       extra={"study": study_name, "storage": storage_label, "total_trials": settings.total_trials,
                              "space": space.describe(), "backbone": settings.backbone_index})
        existing = client.get_experiment_by_name(experiment)
        found = find_step(client, existing.experiment_id, TUNE, key) if n_trials == 0 and run_id is None and \
            existing is not None else None
        if found is not None:  # the study is complete and its run is logged: nothing to do
            best = json.loads(artifact_path(found, BEST_PARAMS_ARTIFACT, client).read_text())
            result = _study_result(found.info.run_id, study, study_name, storage_label, best)
            result.reused = True
            return result
    runner = SubsetRunner(config, experiment, ctx, device)
    experiment_id = client.get_run(run_id).info.experiment_id if run_id else runner.experiment_id
    tags = {KIND_TAG: TUNE, STUDY_TAG: study_name, "config_hash": config.config_hash(),
            BACKBONE_TAG: backbone_hash(config, settings.backbone_index), MLFLOW_RUN_NAME: f"tune-{study_name}",
            **(step_tags(key) if key else {})}
    if run_id is None:
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
    params = {**config.to_params(), **space.describe(), "tune.n_trials": str(n_trials),
              "tune.study_name": study_name, "tune.storage": storage_label,
              "tune.backbone_index": "all" if settings.backbone_index is None else str(settings.backbone_index),
              "tune.sampler_seed": str(settings.sampler_seed)}
    log_new_params(client, run_id, params)
    set_tags(client, run_id, tags)
    with run_scope(client, run_id):
        found = reuse_backbone(client, experiment_id, runner, settings.backbone_index)
        backbone = found[0] if found else pretrain_backbone(runner, settings.backbone_index)
        if found:
            client.set_tag(run_id, "backbone_from", found[1])
        log_backbone(client, run_id, backbone, config)
        fitter = TrialFitter(backbone, runner)
        objective = make_objective(space, config, fitter, client, experiment_id, run_id, study_name)
        with tqdm(total=n_trials, desc=f"tune {study_name}", disable=not ctx.progress, unit="trial") as bar:
            def advance(study_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                bar.update()
                if any(t.state.name == "COMPLETE" for t in study_.get_trials(deepcopy=False)):
                    bar.set_postfix(best=f"{study_.best_value:.4f}")
            if n_trials:
                study.optimize(objective, n_trials=n_trials, timeout=settings.timeout, callbacks=[advance])
        best = log_study_summary(client, run_id, study, config)
    result = _study_result(run_id, study, study_name, storage_label, best)
    describe_run(client, run_id, tune_note(result))
    return result


def tune_note(result: TuneResult) -> str:
    """The tune run's description in the MLflow UI."""
    counts = ", ".join(f"{n} {state.lower()}" for state, n in result.counts.items())
    baseline = "n/a" if result.default_value is None else f"{result.default_value:.4f}"
    recipe = ", ".join(f"`{k}={v}`" for k, v in result.best_params.items())
    return (f"Optuna study `{result.study_name}` ({result.storage}): {counts} trials (child runs), each scored on "
            f"target accuracy on the validation ranking half, never the selection half or the test split. Best "
            f"{result.best_value:.4f} (the profile's recipe {baseline}) with {recipe}: `{BEST_PARAMS_ARTIFACT}`; every "
            f"trial: `trials.csv`. Next: `transfer-core sweep ... --transfer-params-from {result.run_id}`.")


class _quiet_optuna:
    """Optuna logs every trial at INFO; our progress bar and MLflow already say it."""

    def __enter__(self):
        self.level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def __exit__(self, *exc):
        optuna.logging.set_verbosity(self.level)


def find_tune_run(client: MlflowClient, experiment_id: str, run_id: str | None = None):
    """The FINISHED tune run ``run_id``, or the latest FINISHED tune run of the experiment."""
    if run_id is not None:
        return get_run_of_kind(client, run_id, TUNE, "transfer-core tune", finished=True)
    run = latest_run(client, experiment_id, TUNE)
    if run is None:
        raise ConfigError(f"experiment {experiment_id} has no FINISHED tune run; run `transfer-core tune` "
                          "first, or pass the id of a tune run")
    return run


@dataclass(frozen=True)
class TunedRecipe:
    """The best transfer hyperparameters of a tune run, as config overrides, and that run's id."""

    run_id: str
    overrides: dict[str, str]  # {"transfer.mode": "fixed", "transfer.lr": "0.05", ...}


def tuned_recipe(client: MlflowClient, experiment_id: str, run_id: str | None = None) -> TunedRecipe:
    """Best params of a tune run (latest FINISHED one when ``run_id`` is None) as config overrides,
    ready for ``resolve_config(..., recipe=recipe.overrides)``; raises ConfigError if there is no such run."""
    run = find_tune_run(client, experiment_id, run_id)
    try:
        best = json.loads(artifact_path(run, BEST_PARAMS_ARTIFACT, client).read_text())
    except (OSError, MlflowException, ValueError):
        raise ConfigError(f"tune run {run.info.run_id} has no readable {BEST_PARAMS_ARTIFACT}; "
                          "rerun `transfer-core tune`") from None
    with_overrides(RunConfig(), best)  # every key must be a config field
    return TunedRecipe(run.info.run_id, {str(k): str(v) for k, v in best.items()})


def recipe_from(client: MlflowClient, reference: str | None, experiment: str,
                transfer_mode: str | None = None) -> TunedRecipe | None:
    """What ``--transfer-params-from`` names: a tune run id, or ``latest`` (None when unset).

    Refuses a recipe tuned for another transfer mode than ``transfer_mode`` (when given).
    """
    if reference is None or not reference.strip():
        return None
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError(f"experiment {experiment!r} does not exist, so it has no tune run; run "
                          "`transfer-core tune` first or pass the right --experiment")
    run_id = None if reference.strip().lower() == "latest" else reference.strip()
    recipe = tuned_recipe(client, found.experiment_id, run_id)
    tuned_mode = recipe.overrides.get("transfer.mode")
    if transfer_mode and tuned_mode not in (None, transfer_mode):
        raise ConfigError(f"the tune run tuned the {tuned_mode!r} transfer mode but --transfer-mode is "
                          f"{transfer_mode!r}; drop --transfer-mode or tune the {transfer_mode!r} mode")
    return recipe
