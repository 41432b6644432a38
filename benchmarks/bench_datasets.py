"""What dataset inputs cost a sweep: hashing the data once, and one ``log_inputs`` per run, at 1,000 runs.

No training: each fake run is created, logs a ``quick``-sized batch of params and metrics
(as ``log_subset_result`` does) and ends FINISHED. Runs alternate between logging their four
dataset inputs (A) and not (B), so both see the same machine load and the same store size;
the difference is what the inputs add per run. Every A run keeps a different class subset,
so the store ends with one source dataset per run, as a real sweep does.

    python benchmarks/bench_datasets.py --runs 1000 [--profile quick] [--store /tmp/bench.db]

Prints: the one-off hashing per process (``RunDatasets``), the time to build one run's inputs,
and per-run logging time with and without inputs (median and p90, and by thousand runs), plus
the inputs' share of a quick run's ~10 s of training.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from common import environment_dirs
from transfer_core.config import build_config
from transfer_core.data import class_mask, load_transfer_data
from transfer_core.track import get_experiment_id, open_store
from transfer_core.track.datasets import RunDatasets, log_dataset_inputs


def one_run(client, experiment_id, params, index, inputs) -> float:
    start = time.perf_counter()
    run_id = client.create_run(experiment_id, tags={"index": str(index)}).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(m, 0.5, now, 0) for m in ("source_acc", "target_val_acc",
                                                                      "target_test_acc", "pretrain_s")],
                     params=[Param(k, v) for k, v in params.items()])
    if inputs is not None:
        log_dataset_inputs(client, run_id, inputs)
    client.set_terminated(run_id, "FINISHED")
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs of each kind (A with inputs, B without)")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--store", default=None, help="sqlite file (default: a new temporary one)")
    args = parser.parse_args()

    config = build_config(args.profile)
    data = load_transfer_data(config.data, environment_dirs())
    start = time.perf_counter()
    datasets = RunDatasets(config.data, data)
    hashing = time.perf_counter() - start
    n_classes = data.source.n_classes
    masks = [class_mask(config.sweep_seed, i, n_classes, config.alpha) for i in range(args.runs)]
    start = time.perf_counter()
    built = [datasets.inputs(m) for m in masks]
    build_us = (time.perf_counter() - start) / args.runs * 1e6

    folder = tempfile.mkdtemp(prefix="bench-datasets-")
    store = args.store or os.path.join(folder, "mlflow.db")
    os.chdir(folder)  # artifacts (none here) and the default store land in the temporary folder
    client = MlflowClient(open_store(f"sqlite:///{store}"))
    experiment_id = get_experiment_id(client, "bench-datasets")
    params = {**config.to_params(), "subset.index": "0", "subset.seed": "0", "subset.n_kept": "50"}
    with_inputs, without = [], []
    for i in range(args.runs):  # interleaved, so load and store size hit both alike
        with_inputs.append(one_run(client, experiment_id, params, i, built[i]))
        without.append(one_run(client, experiment_id, params, i, None))
    a, b = np.array(with_inputs) * 1000, np.array(without) * 1000
    print(f"profile {args.profile}: source {len(data.source)} images x {tuple(data.source.images.shape[1:])}, "
          f"{n_classes} classes; target train/val/test {len(data.target_train)}/{len(data.target_val)}/"
          f"{len(data.target_test)}; load average {os.getloadavg()[0]:.2f}")
    print(f"hash the data once per process (RunDatasets): {hashing:.2f} s")
    print(f"build one run's four inputs: {build_us:.0f} us")
    print(f"per run, {args.runs} runs each, ms:      median    p90   mean")
    print(f"  create + params/metrics + end:    {np.median(b):7.1f} {np.percentile(b, 90):6.1f} {b.mean():6.1f}")
    print(f"  the same + four dataset inputs:   {np.median(a):7.1f} {np.percentile(a, 90):6.1f} {a.mean():6.1f}")
    print(f"  inputs add (median of A - B):     {np.median(a) - np.median(b):7.1f} ms "
          f"({(np.median(a) - np.median(b)) / 10_000:.2%} of a 10 s quick run)")
    step = max(1, args.runs // 4)
    for lo in range(0, args.runs, step):  # does the cost grow as the datasets table fills?
        added = np.median(a[lo:lo + step]) - np.median(b[lo:lo + step])
        print(f"  runs {lo:5d}-{min(lo + step, args.runs) - 1:5d}: added {added:6.1f} ms")
    distinct = len({inputs[0].dataset.digest for inputs in built})
    print(f"distinct source digests: {distinct} of {args.runs}; store {os.path.getsize(store) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
