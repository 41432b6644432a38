"""Executors on real infrastructure: worker processes through an `mlflow server`, and Ray."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from click.testing import CliRunner
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from transfer_core.cli import main
from transfer_core.sweep import collect_sweep
from transfer_core.config import build_config
from transfer_core.execute import threads_per_worker
from transfer_core.sweep import SweepSettings, sweep_with_summary
from support import serve_mlflow

CONFIG = build_config("synthetic", {"pretrain.epochs": "1", "transfer.epochs": "2"})


def finished_children(summary):
    client = MlflowClient()
    return client.search_runs([summary.experiment_id], f"tags.sweep_id = '{summary.sweep_id}' and "
                              "tags.`transfer_core.kind` = 'subset_run' and attributes.status = 'FINISHED'")


ADMIN_PASSWORD = "test-admin-password-0"


@pytest.fixture
def mlflow_server(tmp_path, _empty_store):
    """A shared server as the README starts one: behind MLflow's basic-auth app (user admin, ADMIN_PASSWORD)."""
    (tmp_path / "auth.ini").write_text(f"[mlflow]\ndefault_permission = READ\nadmin_username = admin\n"
                                       f"database_uri = sqlite:///{tmp_path / 'auth.db'}\n")
    yield from serve_mlflow(tmp_path, _empty_store, "--app-name", "basic-auth",
                            env={"MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
                                 "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
                                 "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-secret"})


def test_two_worker_processes_log_through_a_shared_server_that_refuses_a_wrong_password(
        mlflow_server, monkeypatch, tmp_path, make_ctx):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")  # the worker processes inherit them
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    ctx = make_ctx(mlflow_server, workers=2)
    summary = sweep_with_summary(CONFIG, SweepSettings(n_models=2), ctx=ctx)
    assert summary.complete and summary.n_trained == 2
    runs = finished_children(summary)
    assert len(runs) == 2
    workers = {r.data.tags["transfer_core.claim_pid"] for r in runs}
    assert len(workers) == 2 and str(os.getpid()) not in workers  # both workers trained, not this process
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)  # stored by the server
    collected = collect_sweep(summary.sweep_id, summary.experiment_id, ctx=ctx)
    assert collected.indices.tolist() == [0, 1]
    assert not (tmp_path / "mlruns").exists()  # nothing went to a local store

    client = MlflowClient()
    before = {r.info.run_id: r.info.status for r in client.search_runs([summary.experiment_id], "", ViewType.ALL)}
    sweep = ["sweep", "--profile", "synthetic", "--set", "pretrain.epochs=1,transfer.epochs=2", "--n-models", "3",
             "--no-progress"]
    for password, refused in (("wrong", "refused the password given for user 'admin' (HTTP 401)"),
                              (None, "refused no credentials (HTTP 401)")):
        if password is None:
            monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
            monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        else:
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        denied = CliRunner().invoke(main, sweep)
        assert denied.exit_code == 1 and refused in denied.output, denied.output
        assert len(denied.output.strip().splitlines()) == 1 and "Traceback" not in denied.output
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    after = {r.info.run_id: r.info.status for r in client.search_runs([summary.experiment_id], "", ViewType.ALL)}
    assert after == before and len(before) == 3  # the parent and two models: nothing lost, nothing half-made


def test_ray_executor_on_a_local_ray_instance_trains_a_pack_in_one_task(tracking, make_ctx):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = sweep_with_summary(CONFIG, SweepSettings(n_models=2),
                                     ctx=make_ctx(executor="ray", ray_cpus_per_run=1, pack=2))
    finally:
        ray.shutdown()
    assert summary.complete and summary.n_trained == 2
    runs = finished_children(summary)
    assert sorted(int(r.data.tags["index"]) for r in runs) == [0, 1]
    pids = {r.data.tags["transfer_core.claim_pid"] for r in runs}
    assert len(pids) == 1 and str(os.getpid()) not in pids  # one Ray task (worker) trained both
    assert {r.data.tags["pack_size"] for r in runs} == {"2"}


def test_a_killed_worker_loses_only_its_run_and_a_rerun_completes_the_sweep(tracking, make_ctx):
    summaries = []
    thread = threading.Thread(target=lambda: summaries.append(
        sweep_with_summary(CONFIG, SweepSettings(n_models=3), ctx=make_ctx(workers=2))))
    thread.start()
    client, victim, deadline = MlflowClient(), None, time.time() + 300
    while victim is None and thread.is_alive() and time.time() < deadline:
        running = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                     "tags.`transfer_core.kind` = 'subset_run' and attributes.status = 'RUNNING'")
        if running:
            victim = running[0]
            os.kill(int(victim.data.tags["transfer_core.claim_pid"]), signal.SIGKILL)
        time.sleep(0.1)
    thread.join(300)
    assert victim is not None and summaries, "the sweep ended before a worker could be killed"
    first = summaries[0]
    assert (first.n_finished, first.n_failed) == (2, 1)  # the surviving worker did the rest
    assert first.failures[0]["index"] == int(victim.data.tags["index"])
    assert "worker process died" in first.failures[0]["error"]

    second = sweep_with_summary(CONFIG, SweepSettings(n_models=3), ctx=make_ctx())
    assert second.complete and (second.n_reused, second.n_trained) == (2, 1)
    orphan = client.get_run(victim.info.run_id)
    assert orphan.info.status == "KILLED" and orphan.data.tags["superseded"] == "true"


@pytest.mark.parametrize("workers, cores, threads", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (4, 16, 4)])
def test_workers_split_the_cores_between_them(workers, cores, threads):
    assert threads_per_worker(workers, cores) == threads
