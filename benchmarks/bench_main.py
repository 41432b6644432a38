"""Time the README's main job, `mlflow run . --env-manager local`, on a fresh tracking store.

    python benchmarks/bench_main.py [--store DIR] [-P profile=quick ...]

Creates DIR (default: a new temporary folder) with an empty sqlite store, runs the main
entry point from the repository root exactly as `make run` does (extra ``-P`` pass through),
then prints the wall time of the whole job and of each step run (tune, sweep, analyze,
counterfactual, register) read back from the store, the registered champion, and the
machine's load average. Target for the quick profile: at most 8 minutes on 2 CPU cores.
A second call with the same --store shows the reuse path (every step reused).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None, help="folder of the sqlite store and artifacts")
    parser.add_argument("-P", dest="params", action="append", default=[], help="an MLproject parameter k=v")
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="bench_main_"))
    store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store.resolve() / 'mlflow.db'}"
    experiment = next((p.split("=", 1)[1] for p in args.params if p.startswith("experiment=")), "transfer_core")

    import mlflow
    client = mlflow.MlflowClient(uri)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,  # `python` of the entry points = this Python, as in make run
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("TRANSFER_CORE_DATA", str(REPO.parent / "shared" / "data"))
    command = [sys.executable, "-m", "mlflow", "run", ".", "--env-manager", "local"]
    for param in args.params:
        command += ["-P", param]
    print(f"store {store}; running {' '.join(command)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env)
    wall = time.perf_counter() - start

    exp = client.get_experiment_by_name(experiment)
    main_run = client.search_runs([exp.experiment_id], "tags.`transfer_core.kind` = 'main'",
                                  order_by=["attributes.start_time DESC"], max_results=1)[0]
    print(f"\nmain: exit {done.returncode}, wall {wall:.0f} s ({wall / 60:.1f} min)")
    for step in ("tune", "sweep", "analyze", "counterfactual", "register"):
        run = client.get_run(main_run.data.tags[f"step.{step}"])
        seconds = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
        print(f"  {step:15s} {seconds:7.0f} s  run {run.info.run_id}")
    name = f"{experiment}-target"
    try:
        version = client.get_model_version_by_alias(name, "champion")
        print(f"champion: models:/{name}@champion = version {version.version}, pruned={version.tags.get('pruned')}, "
              f"k={version.tags.get('k')}, val {version.tags.get('val_acc')}, test {version.tags.get('test_acc')}, "
              f"full-source test {version.tags.get('full_test_acc')}")
    except mlflow.exceptions.MlflowException:
        print("no champion registered")
    print("load average:", " ".join(f"{x:.1f}" for x in os.getloadavg()), f"on {os.cpu_count()} cores")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
