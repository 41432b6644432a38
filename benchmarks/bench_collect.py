"""Time collect_sweep on synthetic logged runs (no training): 1,000 and 10,000 runs.

Each fake run carries what a real `quick` subset run logs: ~30 params, 5 tags, 6 metrics,
``class_mask.npy`` (100 source classes), ``source_classes.json`` and ``target_outputs.npz``
(10,000 test examples). Runs are written straight into MLflow's sqlite tables in one
transaction (``--via bulk``, seconds) or through ``MlflowClient`` one by one (``--via client``,
about 0.1 s a run here); collect reads them back through the normal MLflow API either way.

    python benchmarks/bench_collect.py --runs 1000 10000 [--n-test 10000] [--via bulk]

Prints seconds for: the search alone, a full collect without cache, the first collect
that writes the cache, a repeat (cache hit), and an incremental collect after 1% more runs.
Targets: 1,000 runs < 10 s and 10,000 runs < 60 s without a cache.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from transfer_core.data import DataDirs
from transfer_core.execute import Context
from transfer_core.sweep import collect_sweep, finished_runs
from transfer_core.config import build_config
from transfer_core.train import save_outputs
from transfer_core.track import CLASSES_ARTIFACT, MASK_ARTIFACT, OUTPUTS_ARTIFACT

SWEEP = "sweep-bench"


def write_artifacts(folder: Path, rng, n_classes: int, n_test: int, labels) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / MASK_ARTIFACT, rng.permutation(n_classes) < n_classes // 2)
    (folder / CLASSES_ARTIFACT).write_text(json.dumps([f"class{c}" for c in range(n_classes)]))
    outputs = {"margin": rng.normal(size=n_test).astype(np.float32), "prob": rng.random(n_test).astype(np.float32),
               "correct": rng.random(n_test) < 0.6, "pred": rng.integers(0, 10, n_test).astype(np.int16)}
    save_outputs(folder / OUTPUTS_ARTIFACT, outputs, torch.as_tensor(labels))


def run_fields(index: int, n_classes: int) -> tuple[dict, dict, dict]:
    params = {**build_config("quick").to_params(), "subset.index": str(index), "subset.seed": str(index * 7),
              "subset.n_source_classes": str(n_classes), "subset.n_kept": str(n_classes // 2)}
    tags = {"transfer_core.kind": "subset_run", "sweep_id": SWEEP, "index": str(index),
            "config_hash": "0" * 12, "mlflow.runName": f"{SWEEP}-{index:05d}"}
    metrics = {"source_acc": 0.5, "target_val_acc": 0.6, "target_test_acc": 0.6, "pretrain_s": 8.0,
               "transfer_s": 1.0, "evaluate_s": 0.5}
    return params, tags, metrics


def log_bulk(experiment_id: str, start: int, n: int, n_classes: int, n_test: int, rng) -> None:
    """Insert runs into MLflow's own tables in one transaction, then write their artifacts."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.tracking._tracking_service.utils import _get_store

    store = _get_store()
    root = MlflowClient().get_experiment(experiment_id).artifact_location
    labels = np.arange(n_test) % 10
    now = int(time.time() * 1000)
    rows = []
    for index in range(start, start + n):
        run_id = uuid.uuid4().hex
        uri = f"{root}/{run_id}/artifacts"
        params, tags, metrics = run_fields(index, n_classes)
        rows.append(SqlRun(run_uuid=run_id, name=tags["mlflow.runName"], source_type="LOCAL", source_name="bench",
                           entry_point_name="", user_id="bench", status="FINISHED", start_time=now + index,
                           end_time=now + index + 10_000, source_version="", lifecycle_stage="active",
                           artifact_uri=uri, experiment_id=int(experiment_id)))
        rows += [SqlParam(key=k, value=v, run_uuid=run_id) for k, v in params.items()]
        rows += [SqlTag(key=k, value=v, run_uuid=run_id) for k, v in tags.items()]
        for key, value in metrics.items():
            rows.append(SqlMetric(key=key, value=value, timestamp=now, step=0, is_nan=False, run_uuid=run_id))
            rows.append(SqlLatestMetric(key=key, value=value, timestamp=now, step=0, is_nan=False, run_uuid=run_id))
        write_artifacts(Path(uri.removeprefix("file://")), rng, n_classes, n_test, labels)
    with store.ManagedSessionMaker() as session:
        session.add_all(rows)


def log_client(experiment_id: str, start: int, n: int, n_classes: int, n_test: int, rng) -> None:
    """The same runs through MlflowClient, one at a time, as workers log them."""
    client = MlflowClient()
    labels = np.arange(n_test) % 10
    for index in range(start, start + n):
        params, tags, metrics = run_fields(index, n_classes)
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                         params=[Param(k, v) for k, v in params.items()])
        with tempfile.TemporaryDirectory() as tmp:
            write_artifacts(Path(tmp), rng, n_classes, n_test, labels)
            client.log_artifacts(run_id, tmp)
        client.set_terminated(run_id)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench(n_runs: int, n_classes: int, n_test: int, via: str, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    ctx = Context(f"sqlite:///{workdir / 'mlflow.db'}", DataDirs(cache=str(workdir / "cache")), progress=False)
    client = MlflowClient()
    rng = np.random.default_rng(0)
    log = log_bulk if via == "bulk" else log_client
    found = client.get_experiment_by_name("bench")
    if found is None:
        experiment_id = client.create_experiment("bench", artifact_location=str(workdir / "artifacts"))
        t_log, _ = timed(lambda: log(experiment_id, 0, n_runs, n_classes, n_test, rng))
    else:  # a kept --workdir: measure again without logging anew (the 1% extra runs were added before)
        experiment_id, t_log = found.experiment_id, 0.0
        n_runs = len(finished_runs(SWEEP, experiment_id, client))
        for path in (workdir / "cache").glob("sweeps/*.npz"):
            path.unlink()
    t_search, runs = timed(lambda: finished_runs(SWEEP, experiment_id, client))
    assert len(runs) == n_runs
    t_full, full = timed(lambda: collect_sweep(SWEEP, experiment_id, use_cache=False, ctx=ctx))
    t_first, _ = timed(lambda: collect_sweep(SWEEP, experiment_id, ctx=ctx))
    t_hit, hit = timed(lambda: collect_sweep(SWEEP, experiment_id, ctx=ctx))
    assert hit.run_ids == full.run_ids and np.array_equal(hit.outputs["margin"], full.outputs["margin"])
    extra = max(1, n_runs // 100)
    log(experiment_id, n_runs, extra, n_classes, n_test, rng)
    t_inc, grown = timed(lambda: collect_sweep(SWEEP, experiment_id, ctx=ctx))
    assert len(grown) == n_runs + extra
    return {"runs": n_runs, "log_s": t_log, "search_s": t_search, "collect_no_cache_s": t_full,
            "collect_writing_cache_s": t_first, "collect_cache_hit_s": t_hit,
            f"collect_after_{extra}_new_s": t_inc}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--n-test", type=int, default=10000, help="target test examples per run (CIFAR-10: 10,000)")
    parser.add_argument("--n-classes", type=int, default=100, help="source classes (CIFAR-100: 100)")
    parser.add_argument("--via", choices=("bulk", "client"), default="bulk", help="how the fake runs are logged")
    parser.add_argument("--workdir", default=None,
                        help="where the store goes (default: a temporary folder); a kept one is measured again "
                             "without logging the runs anew")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.workdir or tmp)
        for n in args.runs:
            result = bench(n, args.n_classes, args.n_test, args.via, base / f"runs{n}-{args.via}")
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}), flush=True)


if __name__ == "__main__":
    main()
