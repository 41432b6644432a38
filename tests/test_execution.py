"""Executors on real infrastructure: worker processes through an `mlflow server`, and Ray."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from transfer_core.collect import collect_sweep
from transfer_core.config import build_config
from transfer_core.execution import threads_per_worker
from transfer_core.sweep import sweep_with_summary

CONFIG = build_config("synthetic", {"pretrain.epochs": "1", "transfer.epochs": "2"})


def finished_children(summary):
    client = MlflowClient()
    return client.search_runs([summary.experiment_id], f"tags.sweep_id = '{summary.sweep_id}' and "
                              "tags.`transfer_core.kind` = 'subset_run' and attributes.status = 'FINISHED'")


@pytest.fixture
def mlflow_server(tmp_path, _empty_store):
    """A real `mlflow server` on loopback with a sqlite backend and served artifacts; stopped after."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    shutil.copy(_empty_store, tmp_path / "server.db")
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "served-artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError("mlflow server did not start:\n" + (tmp_path / "server.log").read_text()[-2000:])
            time.sleep(0.3)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn workers: a session of our own
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def test_two_worker_processes_log_through_a_shared_mlflow_server(mlflow_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    summary = sweep_with_summary(CONFIG, 2, workers=2, tracking_uri=mlflow_server, progress=False)
    assert summary.complete and summary.n_trained == 2
    runs = finished_children(summary)
    assert len(runs) == 2
    workers = {r.data.tags["claim_pid"] for r in runs}
    assert len(workers) == 2 and str(os.getpid()) not in workers  # both workers trained, not this process
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)  # stored by the server
    collected = collect_sweep(summary.sweep_id, summary.experiment_id, progress=False)
    assert collected.indices.tolist() == [0, 1]
    assert not (tmp_path / "mlruns").exists()  # nothing went to a local store


def test_ray_executor_on_a_local_ray_instance(tracking):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = sweep_with_summary(CONFIG, 2, executor="ray", ray_cpus_per_run=1, progress=False)
    finally:
        ray.shutdown()
    assert summary.complete and summary.n_trained == 2
    runs = finished_children(summary)
    assert sorted(int(r.data.tags["index"]) for r in runs) == [0, 1]
    assert str(os.getpid()) not in {r.data.tags["claim_pid"] for r in runs}  # trained in Ray workers


@pytest.mark.parametrize("workers, cores, threads", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (4, 16, 4)])
def test_workers_split_the_cores_between_them(workers, cores, threads):
    assert threads_per_worker(workers, cores) == threads
