"""Sweeps end to end on the synthetic profile: kill and resume, concurrent commands, growth, bad input."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from transfer_core.cli import main
from transfer_core.sweep import collect_sweep
from transfer_core.config import build_config
from transfer_core.data import DataDirs, class_mask, data_digest
from transfer_core.execute import Context
from transfer_core.sweep import SweepConflictError, SweepSettings, run_sweep, sweep_id_for, sweep_with_summary

REPO = str(Path(__file__).resolve().parents[2])
TINY = {"pretrain.epochs": "1", "transfer.epochs": "2"}
TINY_ARGS = ["--profile", "synthetic", "--set", "pretrain.epochs=1", "--set", "transfer.epochs=2"]
CONFIG = build_config("synthetic", TINY)
SWEEP_ID = sweep_id_for(CONFIG, data_digest(CONFIG.data))


# Subprocess sweeps train with one torch thread: the test machine has 2 cores shared by several jobs,
# where 2-thread torch runs several times slower than 1-thread.
def one_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # read now: fixtures set the store and cache variables


def sweep_command(*args):
    return [sys.executable, "-m", "transfer_core.cli", "sweep", *TINY_ARGS, "--no-progress", *args]


def store_context() -> Context:
    """The tracking fixture's store (from the environment it sets) and the session's cache, as a Context."""
    return Context(os.environ["MLFLOW_TRACKING_URI"], DataDirs(cache=os.environ["TRANSFER_CORE_CACHE"]),
                   progress=False)


def experiment_id(name="transfer_core"):
    found = MlflowClient().get_experiment_by_name(name)
    return found.experiment_id if found else None


def sweep_runs(kind="subset_run", sweep_id=SWEEP_ID, experiment="transfer_core"):
    exp = experiment_id(experiment)
    if exp is None:
        return []
    return MlflowClient().search_runs([exp], f"tags.`transfer_core.kind` = '{kind}' and tags.sweep_id = '{sweep_id}'",
                                      ViewType.ALL, max_results=1000)


def by_index(runs):
    grouped = {}
    for run in runs:
        grouped.setdefault(int(run.data.tags["index"]), []).append(run)
    return grouped


def assert_complete_sweep(n_models):
    """Exactly one FINISHED, not superseded run per index; every other run superseded and never trained."""
    grouped = by_index(sweep_runs())
    assert sorted(grouped) == list(range(n_models))
    for index, runs in grouped.items():
        kept = [r for r in runs if r.data.tags.get("superseded") != "true"]
        assert len(kept) == 1 and kept[0].info.status == "FINISHED", index
        assert sum(r.info.status == "FINISHED" for r in runs) == 1, index
        for other in runs:
            if other is not kept[0]:
                assert other.info.status in ("KILLED", "FAILED"), index
    collected = collect_sweep(SWEEP_ID, experiment_id(), ctx=store_context())
    assert collected.indices.tolist() == list(range(n_models))
    n_val = len(collected.val_labels)  # every run recorded its validation outputs too
    assert n_val > 0 and all(v.shape == (n_models, n_val) for v in collected.val_outputs.values())
    assert len(np.unique(collected.masks, axis=0)) == n_models
    for index, mask in zip(collected.indices, collected.masks):
        np.testing.assert_array_equal(mask, class_mask(CONFIG.sweep_seed, int(index), mask.size, CONFIG.alpha))
    finished = [r for r in sweep_runs() if r.info.status == "FINISHED"]
    contexts = [sorted(tag.value for d in r.inputs.dataset_inputs for tag in d.tags) for r in finished]
    assert contexts == [["evaluation", "pretrain", "transfer", "validation"]] * n_models  # even when logged at once
    assert len({pretrain_digest(r) for r in finished}) == n_models  # other kept classes, other source data
    parents = [r for r in sweep_runs("sweep") if r.data.tags.get("superseded") != "true"]
    assert len(parents) == 1
    assert parents[0].info.run_name == SWEEP_ID and SWEEP_ID in parents[0].data.tags["mlflow.note.content"]
    return parents[0]


def pretrain_digest(run) -> str:
    return next(d.dataset.digest for d in run.inputs.dataset_inputs if d.tags[0].value == "pretrain")


def test_sigkill_mid_sweep_then_resume_trains_only_what_is_missing(tracking, tmp_path):
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(sweep_command("--n-models", "3"), stdout=log, stderr=subprocess.STDOUT,
                                env=one_thread_env())
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            statuses = [r.info.status for r in sweep_runs()]
            if "FINISHED" in statuses and "RUNNING" in statuses:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.1)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-2000:]
    orphans = [r.info.run_id for r in sweep_runs() if r.info.status == "RUNNING"]
    finished_before = {r.info.run_id for r in sweep_runs() if r.info.status == "FINISHED"}
    assert len(orphans) == 1 and 1 <= len(finished_before) < 3

    done = subprocess.run(sweep_command("--n-models", "3"), capture_output=True, text=True, timeout=300,
                          env=one_thread_env())
    assert done.returncode == 0, done.stderr[-2000:]
    parent = assert_complete_sweep(3)
    orphan = MlflowClient().get_run(orphans[0])
    assert orphan.info.status == "KILLED" and orphan.data.tags["superseded"] == "true"
    assert finished_before <= {r.info.run_id for r in sweep_runs() if r.info.status == "FINISHED"}
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_reused"] == len(finished_before)
    assert parent.data.metrics["n_trained"] == 3 - len(finished_before)


def test_a_killed_pack_loses_only_its_runs_and_a_resume_retrains_exactly_those(tracking, tmp_path, make_ctx):
    """Packs of 3 of 5 models: SIGKILL while the second pack (2 models) trains, then resume."""
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(sweep_command("--n-models", "5", "--pack", "3"), stdout=log, stderr=subprocess.STDOUT,
                                env=one_thread_env())
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            runs = sweep_runs()
            training = [r for r in runs if r.info.status == "RUNNING" and "pack_size" in r.data.tags]
            if sum(r.info.status == "FINISHED" for r in runs) == 3 and len(training) == 2:
                proc.send_signal(signal.SIGKILL)  # the second pack has claimed both its models and trains them
                break
            time.sleep(0.1)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-2000:]
    first = sweep_runs()
    orphans = {r.info.run_id for r in first if r.info.status == "RUNNING"}
    finished_before = {r.info.run_id for r in first if r.info.status == "FINISHED"}
    assert {r.data.tags["pack_size"] for r in first} == {"3", "2"}  # both packs had claimed all their models

    summary = sweep_with_summary(CONFIG, SweepSettings(n_models=5), ctx=make_ctx(pack=3))
    assert (summary.n_reused, summary.n_trained) == (3, 2)  # exactly the killed pack's models
    assert_complete_sweep(5)  # 5 FINISHED runs, distinct masks, every other run superseded
    retrained = [r for r in sweep_runs() if r.info.status == "FINISHED" and r.info.run_id not in finished_before]
    assert sorted(r.data.tags["index"] for r in retrained) == \
        sorted(r.data.tags["index"] for r in first if r.info.run_id in orphans)
    for run_id in orphans:
        orphan = MlflowClient().get_run(run_id)
        assert orphan.info.status == "KILLED" and orphan.data.tags["superseded"] == "true"


def test_three_sweep_commands_at_once_on_a_new_store_never_train_an_index_twice(new_store, tmp_path):
    """The store does not exist yet: all three processes open (and would create) it at once."""
    procs = [subprocess.Popen(sweep_command("--n-models", "6"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=one_thread_env()) for _ in range(3)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
    assert not any("Traceback" in err for _, err in results), [err[-2000:] for _, err in results]
    outputs = [out for out, _ in results]
    trained = [int(re.search(r"(\d+) trained", out).group(1)) for out in outputs]
    assert sum(trained) == 6 and sum(n > 0 for n in trained) >= 2, outputs  # the work was shared
    parent = assert_complete_sweep(6)
    for run in sweep_runs():  # a withdrawn claim never trained: no metrics, no artifacts
        if run.data.tags.get("superseded") == "true":
            assert not run.data.metrics and not run.data.params
    assert all(f"parent run {parent.info.run_id}" in out for out in outputs)


def test_growing_a_sweep_reuses_its_runs_and_an_mlflow_run_gets_a_pointer(ctx):
    first = run_sweep(CONFIG, SweepSettings(n_models=1), ctx=ctx)
    assert first == SWEEP_ID
    before = collect_sweep(SWEEP_ID, experiment_id(), ctx=store_context())
    invocation = MlflowClient().create_run(experiment_id()).info.run_id  # as `mlflow run` makes one
    summary = sweep_with_summary(CONFIG, SweepSettings(n_models=2), ctx=ctx, invocation_run_id=invocation)
    assert (summary.n_reused, summary.n_trained, summary.n_finished) == (1, 1, 2)
    after = collect_sweep(SWEEP_ID, experiment_id(), ctx=store_context())
    assert after.run_ids[:1] == before.run_ids
    np.testing.assert_array_equal(after.outputs["margin"][:1], before.outputs["margin"])
    parent = assert_complete_sweep(2)
    assert parent.info.run_id != invocation
    pointer = MlflowClient().get_run(invocation)
    assert pointer.data.tags["parent_run_id"] == parent.info.run_id
    assert pointer.info.run_name == SWEEP_ID and parent.info.run_id in pointer.data.tags["mlflow.note.content"]
    assert parent.data.tags["n_models"] == "2"
    again = sweep_with_summary(CONFIG, SweepSettings(n_models=2), ctx=ctx)  # nothing left to do
    assert (again.n_reused, again.n_trained) == (2, 0)


def test_mlflow_run_entry_point_makes_the_sweep_parent(tracking):
    env = {**one_thread_env(), "MLFLOW_TRACKING_URI": tracking,  # `mlflow run` calls `python`: make it this one
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run([sys.executable, "-m", "mlflow", "run", REPO, "-e", "sweep", "--env-manager", "local",
                           "--experiment-name", "transfer_core", "-P", "profile=synthetic", "-P", "n_models=1",
                           "-P", "overrides=pretrain.epochs=1,transfer.epochs=2"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    parent = assert_complete_sweep(1)
    assert parent.data.tags["mlflow.project.entryPoint"] == "sweep"
    child = sweep_runs()[0]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_a_stored_sweep_with_another_config_is_refused(ctx):
    run_sweep(CONFIG, SweepSettings(n_models=1, sweep_id="named"), ctx=ctx)
    n_runs = len(sweep_runs(sweep_id="named"))
    other = build_config("synthetic", {**TINY, "transfer.lr": "0.05"})
    with pytest.raises(SweepConflictError, match=r"transfer\.lr is 0\.1 there but 0\.05 here"):
        run_sweep(other, SweepSettings(n_models=2, sweep_id="named"), ctx=ctx)
    result = CliRunner().invoke(main, ["sweep", *TINY_ARGS, "--set", "transfer.lr=0.05", "--n-models", "2",
                                       "--sweep-id", "named", "--no-progress"])
    assert result.exit_code != 0 and "transfer.lr is 0.1 there but 0.05 here" in result.output
    assert len(sweep_runs(sweep_id="named")) == n_runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "Invalid value for '--workers': 0 is not in the range x>=1"),
    (["--workers", "abc"], "Invalid value for '--workers': 'abc' is not a valid integer range"),
    (["--executor", "slurm"], "Invalid value for '--executor': 'slurm' is not one of 'local', 'ray'"),
    (["--executor", "ray"], "needs Ray, which is not installed"),
    (["--tracking-uri", "http://127.0.0.1:{port}"], "cannot reach the MLflow tracking server"),
    (["--n-models", "0"], "Invalid value for '--n-models': 0 is not in the range x>=1"),
    (["--pack", "0"], "--pack must be a positive number of models or auto, got '0'; use --pack 1"),
    (["--pack", "abc"], "--pack must be a positive number of models or auto, got 'abc'"),
    (["--pack", "10000000"], "a pack of 10000000 models needs about"),  # then: "...; use --pack N or less"
])
def test_bad_input_gives_one_clear_error_and_records_nothing(tracking, monkeypatch, args, message):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: `import ray` fails
    args = [a.format(port=free_port()) for a in args]
    n_models = [] if "--n-models" in args else ["--n-models", "2"]
    result = CliRunner().invoke(main, ["sweep", *TINY_ARGS, *n_models, "--no-progress", *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    if "10000000" in args:
        assert re.search(r"is free; use --pack \d+ or less, or --pack auto", result.output), result.output
    assert sweep_runs() == [] and sweep_runs("sweep") == []
