"""Time the influence estimators at the issue's scale: 1,000 runs x 10,000 targets x 100 classes.

    python benchmarks/bench_influence.py [--models 1000] [--targets 10000] [--classes 100] [--bootstrap 100]

Prints the seconds of each stage and the total; the target is under 30 s on 2 CPU cores,
bootstrap included. Inputs are random, stored as the sweep stores them (float16 margins).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from transfer_core import influence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--targets", type=int, default=10000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--bootstrap", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    masks = np.zeros((args.models, args.classes), bool)
    for row in masks:
        row[rng.choice(args.classes, args.classes // 2, replace=False)] = True
    outputs = (rng.normal(size=(args.models, args.targets)) + masks[:, :1] * 0.5).astype(np.float16)
    groups = np.eye(10, dtype=bool)[rng.integers(0, 10, args.targets)]
    groups = np.concatenate([np.ones((args.targets, 1), bool), groups], 1)  # whole target + 10 classes

    stages = {}
    total = time.perf_counter()
    start = time.perf_counter()
    est = influence.difference_of_means(masks, outputs)
    stages["difference of means + Welch SE"] = time.perf_counter() - start
    start = time.perf_counter()
    influence.bootstrap_std_error(masks, outputs, n_boot=args.bootstrap)
    stages[f"bootstrap SE per example (B={args.bootstrap})"] = time.perf_counter() - start
    start = time.perf_counter()
    g = influence.group_means(outputs, groups)
    influence.bootstrap_draws(masks, g, influence.bootstrap_weights(len(masks), args.bootstrap))
    stages["group aggregates + their bootstrap"] = time.perf_counter() - start
    start = time.perf_counter()
    influence.ridge_datamodel(masks, outputs)
    stages["ridge datamodel (11 penalties, held-out choice)"] = time.perf_counter() - start
    start = time.perf_counter()
    influence.split_half_stability(masks, g)
    stages["split-half rank stability"] = time.perf_counter() - start
    elapsed = time.perf_counter() - total
    print(f"{args.models} runs x {args.targets} targets x {args.classes} classes, "
          f"{os.cpu_count()} CPUs, numpy {np.__version__}")
    for name, seconds in stages.items():
        print(f"  {name:<50s} {seconds:7.2f} s")
    print(f"  {'total':<50s} {elapsed:7.2f} s  (target < 30 s)")
    assert np.isfinite(est.influence).all()


if __name__ == "__main__":
    main()
