"""Time the influence estimators at the issue's scale: 1,000 runs x 10,000 targets x 100 classes.

    python benchmarks/bench_influence.py [--models 1000] [--targets 10000] [--classes 100] [--bootstrap 100]

Prints the seconds of each estimator, then of the analysis's whole computation
(``analysis.estimate`` plus the per-example findings); the target is under 30 s on 2 CPU
cores, bootstrap included. Inputs are random, stored as a sweep stores them (float16
margin and prob, bool correct), with 10 target classes.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from transfer_core.analysis import findings, influence
from transfer_core.analysis import AnalysisSettings, estimate


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
    labels = rng.integers(0, 10, args.targets)
    groups = np.concatenate([np.ones((args.targets, 1), bool), np.eye(10, dtype=bool)[labels]], 1)

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
    stages["sum of the stages above"] = time.perf_counter() - total

    start = time.perf_counter()
    all_outputs = {"margin": outputs, "prob": (outputs > 0).astype(np.float16) * 0.5, "correct": outputs > 0}
    names, targets = [f"c{i}" for i in range(args.classes)], [f"t{k}" for k in range(10)]
    result = estimate(masks, all_outputs, labels, names, targets, AnalysisSettings(bootstrap=args.bootstrap))
    findings.subpopulations(result.influence, labels, targets, names, [str(i) for i in range(args.targets)])
    findings.leakage_candidates(result.influence, result.std_error, 3.0, 2.0, 50)
    elapsed = time.perf_counter() - start
    print(f"{args.models} runs x {args.targets} targets x {args.classes} classes, "
          f"{os.cpu_count()} CPUs, numpy {np.__version__}")
    for name, seconds in stages.items():
        print(f"  {name:<50s} {seconds:7.2f} s")
    print(f"  {'analysis.estimate (margin + accuracy) + findings':<50s} {elapsed:7.2f} s  (target < 30 s)")
    assert np.isfinite(est.influence).all() and np.isfinite(result.influence).all()


if __name__ == "__main__":
    main()
