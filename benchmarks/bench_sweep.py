"""Sweep throughput from the shell, and the tracking cost per run as a store fills up.

``throughput`` (default): ``transfer-core sweep --profile quick --n-models N --workers W`` in a
new store, timed from the shell as a user waits for it (worker start, data loading, the
parent run's summary included), for each ``--workers`` value in turn; prints models/hour.
``--workers 2 1`` compares the thread policies of a 2-core machine: 2 workers of 1 torch
thread each against 1 worker (in the command's process) with 2 threads.

``overhead``: everything a sweep does around one model's computation (the read-only look,
the claim and its contest search, logging params, metrics and the outputs, ending the run),
through the real :func:`transfer_core.execute.tasks.attempt_pack` with the training replaced by
a stored result of a `quick` run's shape, for ``--runs`` models into one store: seconds per
run in bins of 100, to see whether it grows with the store.

    TRANSFER_CORE_DATA=../shared/data python benchmarks/bench_sweep.py [--n-models 100] [--workers 2 1]
    TRANSFER_CORE_DATA=../shared/data python benchmarks/bench_sweep.py overhead [--runs 600]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sweep_command(profile: str, overrides: list[str], n_models: int, workers: int, uri: str) -> list[str]:
    script = Path(sys.executable).parent / "transfer-core"  # the console script, as a user types it
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "transfer_core.cli"]
    return head + ["sweep", "--profile", profile, "--n-models", str(n_models), "--workers", str(workers),
                   "--tracking-uri", uri, "--no-progress", *[a for o in overrides for a in ("--set", o)]]


def throughput(args) -> None:
    for workers in args.workers:
        store = Path(tempfile.mkdtemp(prefix=f"bench_sweep_w{workers}_"))
        uri = f"sqlite:///{store / 'mlflow.db'}"
        command = sweep_command(args.profile, args.overrides, args.n_models, workers, uri)
        load = os.getloadavg()
        print(f"{time.strftime('%Y-%m-%d %H:%M')} load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
              f"running {' '.join(command)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=store, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"the sweep failed:\n{done.stderr[-3000:]}")
        line = done.stdout.strip().splitlines()[-1]
        median = re.search(r"median ([0-9.]+) s", line)
        load = os.getloadavg()
        print(f"workers {workers}: {args.n_models} models in {wall:.1f} s = {3600 * args.n_models / wall:.0f} "
              f"models/hour ({wall / args.n_models:.2f} s a model; median wall per run in its worker "
              f"{median.group(1) if median else '?'} s); load average after {load[0]:.2f} {load[1]:.2f} "
              f"{load[2]:.2f}\n  {line}", flush=True)


def overhead(args) -> None:
    import numpy as np
    import torch

    import transfer_core.execute.subset_runner as runner_module
    from transfer_core.config import build_config, parse_overrides
    from common import environment_context
    from transfer_core.execute import Job, SubsetRunner
    from transfer_core.execute.tasks import attempt_pack
    from transfer_core.sweep.sweep import sweep_tasks
    from transfer_core.track.claims import Heartbeat
    from transfer_core.train import SubsetRunResult, build_model, Normalized

    store = Path(tempfile.mkdtemp(prefix="bench_sweep_overhead_"))
    os.chdir(store)
    ctx = environment_context(f"sqlite:///{store / 'mlflow.db'}")
    uri = ctx.tracking_uri
    config = build_config(args.profile, parse_overrides(",".join(args.overrides)))
    runner = SubsetRunner(config, "bench-overhead", ctx)
    data, rng = runner.data, np.random.default_rng(0)

    def outputs(n: int) -> dict:
        return {"margin": rng.normal(size=n).astype(np.float32), "prob": rng.random(n).astype(np.float32),
                "correct": rng.random(n) < 0.45, "pred": rng.integers(0, 10, n).astype(np.int16)}

    model = Normalized(build_model(config.pretrain.arch, 10, config.pretrain.width), *data.source_norm)

    def stored_result(config, data, class_mask, seed, *args, **kwargs) -> SubsetRunResult:
        return SubsetRunResult(class_mask, model, outputs(len(data.target_test)), outputs(len(data.target_val)),
                               {"source_acc": 0.27, "target_val_acc": 0.44, "target_test_acc": 0.44},
                               {"pretrain_s": 0.0, "transfer_s": 0.0, "evaluate_s": 0.0})

    runner_module.run_subset = stored_result  # no training: only what the sweep adds around it
    client = runner.client
    parent = client.create_run(runner.experiment_id, tags={"transfer_core.kind": "sweep",
                                                           "sweep_id": "sweep-overhead"}).info.run_id
    job, heartbeat = Job(config, "bench-overhead", uri, ctx.dirs), Heartbeat(client)
    times = []
    for task in sweep_tasks("sweep-overhead", parent, list(range(args.runs))):
        start = time.perf_counter()
        (outcome,) = attempt_pack(runner, job, (task,), heartbeat)
        times.append(time.perf_counter() - start)
        if outcome.status != "trained":
            sys.exit(f"{task.name}: {outcome.status} {outcome.error}")
    heartbeat.stop()
    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, torch threads {torch.get_num_threads()}, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; tracking seconds per run (look, claim, log, end), "
          f"{args.profile} shapes:")
    for first in range(0, args.runs, 100):
        chunk = np.array(times[first:first + 100])
        print(f"  runs {first:4d}-{first + len(chunk) - 1:4d}: median {np.median(chunk):.3f} s, "
              f"p90 {np.percentile(chunk, 90):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["throughput", "overhead"], default="throughput")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a config override k=v")
    parser.add_argument("--n-models", type=int, default=100, help="models per throughput measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="worker counts to time, in turn")
    parser.add_argument("--runs", type=int, default=600, help="runs logged by the overhead measurement")
    args = parser.parse_args()
    if not os.environ.get("TRANSFER_CORE_DATA"):
        os.environ["TRANSFER_CORE_DATA"] = str(REPO.parent / "shared" / "data")
    throughput(args) if args.mode == "throughput" else overhead(args)


if __name__ == "__main__":
    main()
