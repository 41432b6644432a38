"""Sweep costs on this machine: tracking overhead per run, and throughput with 1 and 2 workers.

Overhead: one `quick` subset run is computed without tracking (``run_subset``), then
everything a sweep adds around it is timed on its own, against a sqlite store: the
read-only look, the claim (create run + contest search), logging params/metrics and the
three artifacts, and ending the run. Reported as seconds and as % of the run's compute.

Throughput: ``run_sweep`` of N `quick` models with ``--workers 1`` and ``--workers 2`` in fresh
stores, wall time from the call to its return (data loading and process start included).

    TRANSFER_CORE_DATA=../shared/data python benchmarks/bench_sweep.py [--profile quick] [--n-models 4]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from transfer_core.track.claims import Heartbeat, claim_tags, contest, is_live
from transfer_core.config import build_config, parse_overrides
from transfer_core.execute import SubsetRunner
from transfer_core.data import run_seed
from transfer_core.sweep import sweep_with_summary
from transfer_core.track import log_subset_result
from transfer_core.train import run_subset


def use_store(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()


def overhead(config, repeats: int, folder: Path) -> dict:
    use_store(folder)
    runner = SubsetRunner(config, "bench-overhead")
    client, sweep_id = runner.client, "sweep-overhead"
    heartbeat = Heartbeat(client)
    compute, tracking = [], []
    for index in range(repeats):
        mask = runner.mask_for(index)
        start = time.perf_counter()
        result = run_subset(config, runner.data, mask, run_seed(config.sweep_seed, index), runner.source_test,
                            runner.device)
        compute.append(time.perf_counter() - start)

        start = time.perf_counter()
        key = key_filter(sweep_id, index)
        assert not any(is_live(r) for r in client.search_runs([runner.experiment_id], key))
        run_id = runner.create_run(index, sweep_id, None, extra_tags=claim_tags())
        assert contest(client, runner.experiment_id, run_id, key) == "claimed"
        heartbeat.hold(run_id)
        log_subset_result(client, run_id, config, result, index, run_seed(config.sweep_seed, index),
                          runner.source_class_names, runner.data.target_test.labels, log_checkpoint=False)
        heartbeat.release(run_id)
        client.set_terminated(run_id, status="FINISHED")
        tracking.append(time.perf_counter() - start)
    heartbeat.stop()
    compute_s, tracking_s = float(np.median(compute)), float(np.median(tracking))
    return {"compute_s": compute_s, "tracking_s": tracking_s, "overhead_pct": 100 * tracking_s / compute_s,
            "compute_all_s": [round(c, 2) for c in compute], "tracking_all_s": [round(t, 3) for t in tracking]}


def throughput(config, n_models: int, workers: int, folder: Path) -> dict:
    use_store(folder)
    start = time.perf_counter()
    summary = sweep_with_summary(config, n_models, experiment="bench-throughput", workers=workers, progress=False)
    wall = time.perf_counter() - start
    assert summary.complete
    return {"workers": workers, "n_models": n_models, "wall_s": wall, "runs_per_min": 60 * n_models / wall,
            "run_wall_median_s": summary.run_wall_median_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", dest="overrides", default="", help="overrides, e.g. pretrain.epochs=4")
    parser.add_argument("--repeats", type=int, default=3, help="runs for the overhead measurement")
    parser.add_argument("--n-models", type=int, default=4, help="models per throughput measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    config = build_config(args.profile, parse_overrides(args.overrides))
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_overhead:
            result = overhead(config, args.repeats, Path(tmp) / "overhead")
            print(json.dumps({"overhead": {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}}),
                  flush=True)
        for workers in args.workers:
            result = throughput(config, args.n_models, workers, Path(tmp) / f"workers{workers}")
            print(json.dumps({"throughput": {k: round(v, 2) if isinstance(v, float) else v
                                             for k, v in result.items()}}), flush=True)


if __name__ == "__main__":
    main()
