"""Real Optuna studies on the synthetic profile: journal storage, resuming, two processes,
divergence, MLflow runs matching trials one for one, hand-over, and clear errors."""
import copy
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from optuna.storages.journal import JournalFileBackend, JournalStorage

from transfer_core.cli import main
from transfer_core.config import ConfigError, build_config, parse_overrides, resolve_config
from transfer_core.train import accuracy
from transfer_core.train.models import Normalized
from transfer_core.execute import SubsetRunner
from transfer_core.track import KIND_TAG, artifact_path, run_filter
from transfer_core.train.loop import seed_everything
from transfer_core.train import evaluate_split, transfer
from transfer_core.tune.backbone import TrialFitter, ranking_half, reuse_backbone
from transfer_core.tune.records import BEST_PARAMS_ARTIFACT, HISTORY_PLOT, IMPORTANCE_PLOT, TRIALS_ARTIFACT
from transfer_core.tune.settings import TuneSettings
from transfer_core.tune.study import (StorageError, find_tune_run, load_study, open_storage,
                                      recipe_from, tune, tuned_recipe)
from support import serve_mlflow, store_context


def tuned_overrides(experiment_id, run_id=None):
    return tuned_recipe(MlflowClient(), experiment_id, run_id).overrides


def quiet():
    """The environment's store as a Context without progress bars."""
    from transfer_core.data import DataDirs
    from transfer_core.execute import Context
    return Context(os.environ["MLFLOW_TRACKING_URI"], DataDirs(cache=os.environ["TRANSFER_CORE_CACHE"]),
                   progress=False)

EXPERIMENT = "tune-tests"
TINY = {"pretrain.epochs": "2", "transfer.epochs": "4"}
SET = ",".join(f"{k}={v}" for k, v in TINY.items())
SPACE = "lr=0.01:2:log;weight_decay=0.000001:0.01:log;epochs=2:6"
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One private MLflow store and working folder (journals land in optuna/ beside the store)."""
    root = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    yield root
    os.chdir(old_cwd)
    if old_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old_uri
    mlflow.set_tracking_uri(None)


def journal_study(name):
    storage = JournalStorage(JournalFileBackend(f"optuna/{name}.journal"))
    return optuna.load_study(study_name=name, storage=storage)


def children(study_name):
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'tune_trial' and "
                              f"tags.`optuna.study_name` = '{study_name}'", max_results=1000)


@pytest.fixture(scope="module")
def resumed(store):
    """A study of 5 trials, then resumed with 3 more, on one journal file."""
    config = build_config("synthetic", TINY)
    first = tune(config, TuneSettings(n_trials=5, study_name="resume", space=SPACE, sampler_seed=0),
                 EXPERIMENT, ctx=quiet())
    second = tune(config, TuneSettings(n_trials=3, study_name="resume", space=SPACE, sampler_seed=1),
                  EXPERIMENT, ctx=quiet())
    return config, first, second


def test_resuming_a_journal_study_adds_trials_and_keeps_the_backbone(resumed):
    _, first, second = resumed
    assert Path("optuna/resume.journal").is_file()
    assert sum(first.counts.values()) == 5 and sum(second.counts.values()) == 8
    study = journal_study("resume")
    assert len(study.trials) == 8 and all(t.state.is_finished() for t in study.trials)
    assert MlflowClient().get_run(second.run_id).data.tags["backbone_from"] == first.run_id
    assert second.best_value == study.best_value >= second.default_value


def test_total_trials_completes_the_study_and_then_adds_none(resumed):
    """--total-trials makes rerunning a tuning command safe: it tops the study up to N finished
    trials and, once there, adds none, so the best params (and the sweep they feed) stay put."""
    config = resumed[0]
    first = tune(config, TuneSettings(n_trials=2, study_name="total", space=SPACE, sampler_seed=0), EXPERIMENT,
                 ctx=quiet())
    settings = TuneSettings(n_trials=1, total_trials=4, study_name="total", space=SPACE, sampler_seed=2)
    topped = tune(config, settings, EXPERIMENT, ctx=quiet())
    assert sum(first.counts.values()) == 2 and sum(topped.counts.values()) == 4  # 2 added, not n_trials=1
    again = tune(config, settings, EXPERIMENT, ctx=quiet())
    assert sum(again.counts.values()) == 4 and len(journal_study("total").trials) == 4
    assert again.best_params == topped.best_params and again.best_value == topped.best_value
    assert MlflowClient().get_run(again.run_id).info.status == "FINISHED"
    with pytest.raises(ConfigError, match="--total-trials 0 asks the study for no trials"):
        tune(config, TuneSettings(total_trials=0), EXPERIMENT, ctx=quiet())


def test_mlflow_child_runs_match_optuna_trials_one_for_one(resumed):
    _, first, second = resumed
    study = journal_study("resume")
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in children("resume")}
    assert sorted(runs) == [t.number for t in study.trials]
    client = MlflowClient()
    for trial in study.trials:
        run = runs[trial.number]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["mlflow.parentRunId"] == (first.run_id if trial.number < 5 else second.run_id)
        assert run.data.tags["optuna.state"] == trial.state.name and run.info.status == STATUS[trial.state.name]
        for name, value in trial.params.items():
            assert type(value)(run.data.params[name]) == value
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_acc")}
        assert history == pytest.approx(trial.intermediate_values, rel=1e-6)  # logged to 6 significant digits
        if trial.state.name == "COMPLETE":
            assert run.data.metrics["target_val_acc"] == pytest.approx(trial.value, rel=1e-6)
        else:
            assert run.data.tags["optuna.stop_reason"] == trial.user_attrs["stop_reason"]


def test_trial_zero_is_the_default_recipe(resumed):
    config, first, _ = resumed
    trial = journal_study("resume").trials[0]
    assert trial.user_attrs["baseline"] is True and trial.state.name == "COMPLETE"
    assert trial.params == {"transfer.lr": config.transfer.lr, "transfer.weight_decay": config.transfer.weight_decay,
                            "transfer.epochs": config.transfer.epochs}
    assert first.default_value == trial.value


def test_parent_logs_best_params_table_and_plots(resumed):
    _, _, second = resumed
    study = journal_study("resume")
    run = MlflowClient().get_run(second.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[KIND_TAG] == "tune"
    best = json.loads(artifact_path(run, BEST_PARAMS_ARTIFACT, MlflowClient()).read_text())
    assert best == second.best_params and best["transfer.mode"] == "fixed"
    assert {k: type(v)(best[k]) for k, v in study.best_params.items()} == study.best_params
    assert all(run.data.params[f"best.{k}"] == v for k, v in best.items())
    assert run.data.metrics["best_val_acc"] == pytest.approx(study.best_value)
    assert len(artifact_path(run, TRIALS_ARTIFACT, MlflowClient()).read_text().strip().splitlines()) == 1 + 8
    for plot in (HISTORY_PLOT, IMPORTANCE_PLOT):
        assert artifact_path(run, plot, MlflowClient()).read_bytes()[:4] == b"\x89PNG"
    assert tuned_overrides(run.info.experiment_id, second.run_id) == best


def test_cached_fixed_feature_trials_equal_plain_transfer(resumed):
    """The cached-feature objective against the plain path: transfer() + evaluation of the model."""
    config, first, _ = resumed
    runner = SubsetRunner(config, EXPERIMENT, store_context())
    backbone, _ = reuse_backbone(runner.client, runner.experiment_id, runner, None)
    fitter = TrialFitter(backbone, runner)
    trial0 = journal_study("resume").trials[0]
    other = build_config("synthetic", {**TINY, "transfer.lr": "0.7", "transfer.epochs": "5"})
    for cfg in (config, other):
        reported = []
        value = fitter.fit(cfg, lambda epoch, loss, acc: reported.append(acc))
        net = transfer(cfg, copy.deepcopy(backbone.net), backbone.norm, runner.data, seed_everything(backbone.seed),
                       runner.device)
        scored = ranking_half(runner)  # trials are scored on the validation ranking half only
        assert 0 < len(scored) < len(runner.data.target_val)
        logits = evaluate_split(Normalized(net, *backbone.norm), scored, runner.device)
        plain = accuracy(logits, scored.labels)
        assert abs(value - plain) <= 1.0 / len(scored)
        assert len(reported) == cfg.transfer.epochs and reported[-1] == pytest.approx(value)
    assert fitter.fit(config) == pytest.approx(trial0.value)  # a recorded value is reproducible


def test_tuning_reads_no_selection_half_example(resumed, monkeypatch):
    """Tuning scores trials on the validation ranking half only. The plant: every selection-half slot of
    class c gets an image that a losing trial's recipe calls c and the winner's does not (labels stay, so
    the halves stay), so that scoring on the whole validation split would move the recipe to the loser.
    A study on the planted data (same sampler seed, same backbone) makes the same trials, with the same
    values, and picks the same recipe as the first five trials of the real study."""
    from transfer_core.config import with_overrides
    from transfer_core.data import validation_halves
    import transfer_core.execute.subset_runner as subset_runner

    config = resumed[0]
    real = journal_study("resume").trials[:5]  # the first call: n_trials=5, sampler seed 0
    complete = [t for t in real if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    runner = SubsetRunner(config, EXPERIMENT, store_context())
    backbone, _ = reuse_backbone(runner.client, runner.experiment_id, runner, None)
    data = runner.data
    pool = torch.cat([data.target_train.images, data.target_test.images])  # images the recipes may disagree on

    def predictions(trial, images):
        cfg = with_overrides(config, {k: str(v) for k, v in trial.params.items()})
        net = transfer(cfg, copy.deepcopy(backbone.net), backbone.norm, data, seed_everything(backbone.seed),
                       runner.device)
        with torch.no_grad():
            return Normalized(net, *backbone.norm).eval()(images.to(runner.device)).argmax(1)

    winner = predictions(best, pool)
    others = [(t, predictions(t, pool)) for t in complete if t.params != best.params]
    loser, called = max(others, key=lambda pair: int((pair[1] != winner).sum()))  # the most different recipe
    val = data.target_val
    selection = ~validation_halves(val.labels.numpy(), config.data.split_seed)
    planted_images = val.images.clone()
    planted = 0
    for i in np.flatnonzero(selection):
        donors = ((called == val.labels[i]) & (winner != val.labels[i])).nonzero().flatten()
        if len(donors):
            planted_images[i] = pool[donors[i % len(donors)]]
            planted += 1
    planted_val = type(val)(planted_images, val.labels, val.class_names, val.file_names)
    whole = {name: float((predictions(t, planted_val.images) == val.labels).float().mean())
             for name, t in (("best", best), ("loser", loser))}
    print(f"planted {planted} of {int(selection.sum())} selection-half images; whole-split accuracy {whole}")
    assert planted > 0 and whole["loser"] > whole["best"], (planted, whole)  # whole-split scoring would flip

    load = subset_runner.load_transfer_data
    monkeypatch.setattr(subset_runner, "load_transfer_data",
                        lambda *a, **k: dataclasses.replace(load(*a, **k), target_val=planted_val))
    again = tune(config, TuneSettings(n_trials=5, study_name="planted", space=SPACE,
                                      sampler_seed=0), EXPERIMENT, ctx=quiet())
    trials = journal_study("planted").trials
    assert [(t.params, t.state.name, t.value, t.intermediate_values) for t in trials] == \
        [(t.params, t.state.name, t.value, t.intermediate_values) for t in real]
    assert journal_study("planted").best_trial.params == best.params and again.best_value == best.value


def test_diverging_learning_rates_are_pruned_with_the_reason(store):
    config = build_config("synthetic", TINY)
    result = tune(config, TuneSettings(n_trials=3, study_name="diverge", space="lr=1e6:1e8:log"),
                  EXPERIMENT, ctx=quiet())
    assert result.counts == {"COMPLETE": 1, "PRUNED": 2, "FAIL": 0}  # only trial 0, the default lr, completes
    study = journal_study("diverge")
    for trial in study.trials[1:]:
        assert trial.state.name == "PRUNED" and trial.user_attrs["stop_reason"].startswith("diverged: loss became")
    runs = [r for r in children("diverge") if r.data.tags["optuna.state"] == "PRUNED"]
    assert len(runs) == 2 and all(r.info.status == "KILLED" and "diverged" in r.data.tags["optuna.stop_reason"]
                                  for r in runs)


def test_full_fine_tuning_also_tunes_batch_size(store):
    config = build_config("synthetic", {**TINY, "transfer.mode": "full", "transfer.epochs": "2"})
    space = "lr=0.01:0.2:log;epochs=1:2;batch_size=64,128"
    result = tune(config, TuneSettings(n_trials=2, study_name="full", space=space, sampler_seed=0),
                  EXPERIMENT, ctx=quiet())
    assert result.counts["COMPLETE"] == 2 and result.best_params["transfer.mode"] == "full"
    batch_sizes = {int(r.data.params["transfer.batch_size"]) for r in children("full")}
    assert batch_sizes <= {64, 128, config.transfer.batch_size} and "transfer.batch_size" in result.best_params


def test_two_processes_on_one_study_record_all_their_trials(store, resumed):
    command = [sys.executable, "-m", "transfer_core.cli", "tune", "--profile", "synthetic", "--set", SET,
               "--space", SPACE, "--n-trials", "3", "--study-name", "shared", "--experiment", EXPERIMENT,
               "--no-progress"]
    procs = [subprocess.Popen(command, cwd=store, env=dict(os.environ), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("best target_val_acc=" in out for out in outputs)
    study = journal_study("shared")
    assert len(study.trials) == 6 and all(t.state.is_finished() for t in study.trials)
    runs = children("shared")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == list(range(6))
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 2


def test_hand_over_to_other_commands_logs_the_tuned_values(resumed):
    config, _, second = resumed
    experiment_id = MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id
    latest = find_tune_run(MlflowClient(), experiment_id)
    finished = MlflowClient().search_runs([experiment_id], run_filter("tune", "FINISHED"))
    assert latest.info.start_time == max(r.info.start_time for r in finished)
    client = MlflowClient()
    assert recipe_from(client, "latest", EXPERIMENT) == tuned_recipe(client, experiment_id, latest.info.run_id)
    assert recipe_from(client, " latest ", EXPERIMENT).run_id == latest.info.run_id
    assert recipe_from(client, "", EXPERIMENT) is None
    recipe = recipe_from(client, second.run_id, EXPERIMENT)
    tuned, provenance = resolve_config("synthetic", parse_overrides(SET), recipe=recipe.overrides,
                                       tune_run_id=recipe.run_id)
    assert provenance.tune_run_id == second.run_id and provenance.base == "profile:synthetic"
    runner = SubsetRunner(tuned, EXPERIMENT, store_context())
    run_id, _ = runner.run(0)
    params = MlflowClient().get_run(run_id).data.params
    assert {k: params[k] for k in second.best_params} == second.best_params
    with pytest.raises(ConfigError, match="tuned the 'fixed' transfer mode but --transfer-mode is 'full'"):
        recipe_from(client, second.run_id, EXPERIMENT, transfer_mode="full")


def test_hand_over_errors(store, resumed):
    experiment_id = MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id
    trial_run = children("resume")[0].info.run_id
    with pytest.raises(ConfigError, match="is a tune_trial run, not a tune run"):
        tuned_overrides(experiment_id, trial_run)
    with pytest.raises(ConfigError, match="no MLflow run 'nope'"):
        tuned_overrides(experiment_id, "nope")
    empty = MlflowClient().create_experiment("no-tunes")
    with pytest.raises(ConfigError, match="has no FINISHED tune run; run `transfer-core tune` first"):
        tuned_overrides(empty)
    with pytest.raises(ConfigError, match="experiment 'missing' does not exist"):
        recipe_from(MlflowClient(), "latest", "missing")


def test_resuming_with_another_config_is_refused(resumed):
    config = build_config("synthetic", {**TINY, "pretrain.epochs": "3"})
    with pytest.raises(StorageError, match="study 'resume' .* was made for another config"):
        tune(config, TuneSettings(n_trials=1, study_name="resume", space=SPACE), EXPERIMENT, ctx=quiet())


@pytest.mark.parametrize("args, message", [
    (["--space", ";"], "the search space is empty"),
    (["--space", "lr=1:0.001:log"], "lower bound 1.0 above its upper bound 0.001"),
    (["--space", "momentum=0.1:0.9"], "unknown hyperparameter 'momentum'"),
    (["--storage", "sqlite:////nonexistent-dir/sub/optuna.db"], "cannot open the Optuna storage"),
    (["--storage", "postgresql://tuner:s3cret@127.0.0.1:9/optuna"], "cannot open the Optuna storage"),
    (["--n-trials", "0"], "Invalid value for '--n-trials': 0 is not in the range x>=1"),
    (["--study-name", "../escape"], "study name '../escape' must be"),
])
def test_bad_input_gives_one_clear_error_and_records_nothing(tracking, args, message):
    result = CliRunner().invoke(main, ["tune", "--profile", "synthetic", "--no-progress", "--experiment", "bad", *args])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output and "s3cret" not in result.output
    experiment = MlflowClient().get_experiment_by_name("bad")
    assert experiment is None or not MlflowClient().search_runs([experiment.experiment_id])


def test_mlproject_tune_entry_point_renders_a_valid_command(tmp_path):
    from mlflow.projects._project_spec import load_project

    entry = load_project(str(Path(__file__).resolve().parents[2])).get_entry_point("tune")
    command = entry.compute_command({"n_trials": "7", "study_name": "s"}, str(tmp_path))
    args = command.split("transfer_core.cli ", 1)[1]
    ctx = main.commands["tune"].make_context("tune", shlex.split(args)[1:])
    assert ctx.params["n_trials"] == 7 and ctx.params["study_name"] == "s" and ctx.params["space"] is None
    assert ctx.params["total_trials"] is None and ctx.params["backbone_index"] is None  # "" = not given


def test_baseline_trial_is_queued_only_when_the_default_fits_the_choices(tmp_path):
    config = build_config("synthetic", {"transfer.mode": "full"})  # batch size 128
    for choices, queued in (("64,128", 1), ("64,256", 0)):
        settings = TuneSettings(space=f"lr=0.01:0.1;batch_size={choices}")
        storage, label = open_storage(str(tmp_path / f"{choices}.journal"), "s")
        study = load_study(settings, settings.search_space(config), storage, "s", label, config, "data-digest")
        waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
        assert len(waiting) == queued
        if queued:
            assert waiting[0].system_attrs["fixed_params"] == {"transfer.lr": 0.1, "transfer.batch_size": 128}
            assert waiting[0].user_attrs == {"baseline": True}


@pytest.fixture
def tracking_server(tmp_path, _empty_store):
    """A real `mlflow server` on loopback with served artifacts (no auth)."""
    yield from serve_mlflow(tmp_path, _empty_store)


def test_tuning_twice_on_a_tracking_server_reuses_the_backbone(tracking_server, tmp_path, monkeypatch):
    """On a remote store the backbone is read through the store's own client, never MLflow's global URI (here
    pointed at another, empty store on purpose): the second study reuses the first one's backbone instead of
    pretraining it again."""
    monkeypatch.chdir(tmp_path)  # journal studies under ./mlruns/optuna: a remote store has no folder of its own
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    try:
        ctx = store_context(tracking_server)
        config = build_config("synthetic", TINY)
        first = tune(config, TuneSettings(n_trials=1, study_name="one", sampler_seed=0), "remote", ctx=ctx)
        second = tune(config, TuneSettings(n_trials=1, study_name="two", sampler_seed=0), "remote", ctx=ctx)
    finally:
        mlflow.set_tracking_uri(None)
    client = ctx.client
    first_run, second_run = client.get_run(first.run_id), client.get_run(second.run_id)
    assert first_run.info.artifact_uri.startswith("mlflow-artifacts:")  # stored by the server, not on this disk
    assert "backbone_from" not in first_run.data.tags
    assert second_run.data.tags.get("backbone_from") == first.run_id, second_run.data.tags
    assert "backbone_source_acc" in second_run.data.metrics  # the reused backbone's own figure, carried over
