"""Compare training recipes by target VALIDATION accuracy over several masks and seeds.

Each recipe is a set of ``--set``-style overrides on a profile. Every recipe trains the
same models (sweep model ``i`` keeps ``class_mask(sweep_seed, i)`` and trains with seed
``run_seed(sweep_seed, i)``), interleaved model by model (A, B, A, B, ...) so that load on a
shared machine hits all recipes alike; differences are paired by model. Test accuracy is
printed for information only: choose by validation.

    python benchmarks/bench_recipe.py --runs 8 --recipe "" --recipe "pretrain.epochs=4"

Prints one line per model and recipe, then per recipe: mean validation and test accuracy
with their standard errors, the paired validation difference from the first recipe, and
the median CPU seconds per phase (process time, which load inflates less than wall time).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from common import environment_dirs
from transfer_core.config import build_config, parse_overrides
from transfer_core.data import class_mask, load_split, load_transfer_data, run_seed
from transfer_core.train import run_subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--recipe", action="append", default=[],
                        help="overrides of one recipe, e.g. 'pretrain.epochs=4,pretrain.lr=0.3' ('' = the profile)")
    parser.add_argument("--runs", type=int, default=6, help="models per recipe (sweep indices 0..runs-1)")
    parser.add_argument("--first", type=int, default=0, help="first sweep index")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-source-acc", action="store_true", help="skip scoring held-out source images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipes = args.recipe or [""]
    configs = [build_config(args.profile, parse_overrides(r)) for r in recipes]
    datas = {}
    for config in configs:  # recipes that change the data config get their own data
        key = config.data
        if key not in datas:
            datas[key] = load_transfer_data(config.data, environment_dirs())
    source_test = None if args.no_source_acc else load_split(configs[0].data.source, "test",
                                                             configs[0].data.resolution, environment_dirs())
    rows = {i: [] for i in range(len(recipes))}
    for index in range(args.first, args.first + args.runs):
        for i, config in enumerate(configs):
            data = datas[config.data]
            mask = class_mask(config.sweep_seed, index, data.source.n_classes, config.alpha)
            start, cpu = time.perf_counter(), time.process_time()
            result = run_subset(config, data, mask, run_seed(config.sweep_seed, index), source_test)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            m = result.metrics
            rows[i].append((m["target_val_acc"], m["target_test_acc"], m.get("source_acc", np.nan), wall, cpu,
                            result.timings))
            print(f"model {index:3d} recipe {i}: val {m['target_val_acc']:.4f} test {m['target_test_acc']:.4f} "
                  f"source {m.get('source_acc', float('nan')):.4f} wall {wall:5.1f} s cpu {cpu:5.1f} s "
                  + " ".join(f"{k} {v:.1f}" for k, v in result.timings.items()), flush=True)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nprofile {args.profile}, {args.runs} models from index {args.first}, {args.threads} torch thread(s), "
          f"load average {load}, {time.strftime('%Y-%m-%d %H:%M')}")
    base_val = np.array([r[0] for r in rows[0]])
    for i, recipe in enumerate(recipes):
        val, test, source = (np.array([r[k] for r in rows[i]]) for k in range(3))
        diff = val - base_val
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        cpu = np.median([r[4] for r in rows[i]])
        print(f"recipe {i} [{recipe or 'profile'}]\n  val {100 * val.mean():.2f} ± {100 * _se(val):.2f}   "
              f"test {100 * test.mean():.2f} ± {100 * _se(test):.2f} (info)   source {100 * np.nanmean(source):.2f}"
              f"   val - recipe 0: {100 * diff.mean():+.2f} ± {100 * se:.2f} (paired)   median cpu {cpu:.1f} s")


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


if __name__ == "__main__":
    main()
