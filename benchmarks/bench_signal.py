"""Signal per CPU-hour: how reliably a design ranks the source classes on validation, and what it costs.

The study needs a class ranking that an independent sweep would reproduce. For a *design*
(a recipe, a seeding scheme) this script trains a pilot of models on random half-masks and
measures, on the validation **ranking half** only (the split the tool ranks classes on; the
test split is never read):

- the split-half Spearman of the class ranking (two disjoint halves of the models, averaged
  over random splits), against the number of models per half;
- its Spearman-Brown projection (``analysis.influence.runs_for_reliability``) to 0.5 and 0.9;
- CPU-seconds per model (process CPU time of the training, one torch thread), so CPU-hours to
  0.5 and 0.9;

for each per-example output (margin, true-class probability, correctness) and estimator
(difference of means; difference of means within seed blocks, for common random numbers;
a ridge datamodel whose penalty is chosen on held-out models). With ``--crossed`` it trains
each mask under two seeds and splits the variance of a model's mean output into mask, seed
and interaction.

    python benchmarks/bench_signal.py pilot quick --n-models 120 --workers 2
    python benchmarks/bench_signal.py pilot quick-crn --n-models 120 --seed-block 0 --workers 2
    python benchmarks/bench_signal.py pilot quick250 --n-models 80 --set data.source_images_per_class=250
    python benchmarks/bench_signal.py report outputs/signal/*

A pilot writes one small file per model under ``outputs/signal/<name>/``, so an interrupted
pilot resumes. Seeds: model ``i`` keeps ``class_mask(sweep_seed, i)`` and trains with
``run_seed(sweep_seed, i // seed_block)`` (``--seed-block 0``: one seed for every model).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

OUTPUTS = ("margin", "prob", "correct")
ESTIMATORS = ("dom", "dom_block", "ridge")


def model_seed(sweep_seed: int, index: int, seed_block: int) -> int:
    from transfer_core.data import run_seed
    return run_seed(sweep_seed, 0 if seed_block == 0 else index // seed_block)


_STATE = {}


def _worker_init(profile: str, overrides: dict, data_root: str | None) -> None:
    import torch
    torch.set_num_threads(1)
    from transfer_core.config import build_config
    from common import environment_dirs
    from transfer_core.data import DataDirs, load_transfer_data
    config = build_config(profile, overrides)
    dirs = environment_dirs()
    _STATE.update(config=config, data=load_transfer_data(config.data, DataDirs(data_root or dirs.root, dirs.cache)))


def _train(job: tuple[int, int, int, str]) -> str:
    """Train model (mask index, seed) and write its file; returns the path."""
    from transfer_core.data import class_mask
    from transfer_core.train import run_subset
    mask_index, seed, slot, path = job
    config, data = _STATE["config"], _STATE["data"]
    mask = class_mask(config.sweep_seed, mask_index, data.source.n_classes, config.alpha)
    cpu, wall = time.process_time(), time.perf_counter()
    result = run_subset(config, data, mask, seed)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    out = result.val_outputs
    tmp = path + ".tmp.npz"
    np.savez(tmp, mask=mask, seed=seed, slot=slot, cpu_s=cpu, wall_s=wall, margin=out["margin"].astype(np.float32),
             prob=out["prob"].astype(np.float32), correct=out["correct"].astype(bool),
             labels=data.target_val.labels.numpy(), test_acc=result.metrics["target_test_acc"])
    os.replace(tmp, path)
    return path


def pilot(args) -> None:
    from transfer_core.config import build_config, parse_overrides
    overrides = {}
    for item in args.set or []:
        overrides.update(parse_overrides(item))
    config = build_config(args.profile, overrides)
    folder = Path(args.out) / args.name
    folder.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    (folder / "design.json").write_text(json.dumps({
        "name": args.name, "profile": args.profile, "overrides": overrides, "seed_block": args.seed_block,
        "crossed": args.crossed, "commit": commit, "params": config.to_params()}, indent=1))
    jobs = []
    for i in range(args.n_models):
        seeds = [model_seed(config.sweep_seed, i, args.seed_block)]
        if args.crossed:  # the same mask under two seeds shared by every mask: mask x seed crossed
            seeds = [model_seed(config.sweep_seed, 10**6, 1), model_seed(config.sweep_seed, 10**6 + 1, 1)]
        for slot, seed in enumerate(seeds):
            path = folder / f"model_{i:05d}_{slot}.npz"
            if not path.is_file():
                jobs.append((i, seed, slot, str(path)))
    print(f"{args.name}: {len(jobs)} models to train ({folder})", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers, initializer=_worker_init,
                             initargs=(args.profile, overrides, args.data_root)) as pool:
        for done, _ in enumerate(pool.map(_train, jobs), start=1):
            if done % 10 == 0 or done == len(jobs):
                rate = done / (time.perf_counter() - start) * 3600
                print(f"  {done}/{len(jobs)} trained, {rate:.0f} models/hour", flush=True)


def load(folder: Path) -> dict:
    files = sorted(folder.glob("model_*.npz"))
    rows = [dict(np.load(f)) for f in files]
    design = json.loads((folder / "design.json").read_text())
    stacked = {k: np.stack([r[k] for r in rows]) for k in ("mask", "seed", "slot", "cpu_s", "wall_s", *OUTPUTS,
                                                         "test_acc")}
    stacked["index"] = np.array([int(f.stem.split("_")[1]) for f in files])
    stacked["labels"] = rows[0]["labels"]
    return {"design": design, **stacked}


def per_model(pilot_data: dict, output: str, split_seed: int) -> np.ndarray:
    """Each model's mean ``output`` over the validation ranking half ``(n_models,)``."""
    from transfer_core.data import validation_halves
    ranking = validation_halves(pilot_data["labels"], split_seed)
    return pilot_data[output][:, ranking].astype(np.float64).mean(axis=1)


def effects(masks: np.ndarray, y: np.ndarray, seeds: np.ndarray, estimator: str) -> np.ndarray:
    """Class effects ``(n_classes,)`` on ``y``; positive = keeping the class raises it."""
    from transfer_core.analysis.influence import difference_of_means, ridge_datamodel
    if estimator == "dom_block":  # remove each seed block's mean: models that share a seed are compared
        y = y.copy()
        for s in np.unique(seeds):
            block = seeds == s
            if block.sum() > 1:
                y[block] -= y[block].mean()
    if estimator == "ridge":
        return ridge_datamodel(masks, y[:, None]).coef[0].astype(np.float64)
    return difference_of_means(masks, y[:, None]).influence[0].astype(np.float64)


def split_half(masks, y, seeds, estimator, n_per_half, repeats, rng) -> float:
    """Mean Spearman between the class rankings of two disjoint random sets of ``n_per_half`` models."""
    from transfer_core.analysis.influence import spearman
    values = []
    for _ in range(repeats):
        order = rng.permutation(len(y))
        a, b = order[:n_per_half], order[n_per_half:2 * n_per_half]
        values.append(spearman(effects(masks[a], y[a], seeds[a], estimator),
                               effects(masks[b], y[b], seeds[b], estimator)))
    return float(np.mean(values))


def components(masks: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(signal, noise)``: the variance of the true class effects on ``y`` across classes, and the mean
    squared standard error of their difference-of-means estimates from these ``len(y)`` models.

    Two independent sweeps of ``n`` models each rank the classes with correlation about
    ``signal / (signal + noise * len(y) / n)``: a projection that uses every model (method of moments).
    """
    from transfer_core.analysis.influence import difference_of_means
    est = difference_of_means(masks, y[:, None])
    beta, se = est.influence[0].astype(np.float64), est.std_error[0].astype(np.float64)
    noise = float(np.mean(se ** 2))
    return max(0.0, float(np.var(beta, ddof=1)) - noise), noise


def vc_models(signal: float, noise: float, n_models: int, target: float) -> float:
    """Models per sweep for two sweeps' rankings to correlate ``target``, from :func:`components`."""
    if signal <= 0:
        return float("inf")
    return target / (1 - target) * noise * n_models / signal


def variance_parts(data: dict, y: np.ndarray) -> dict[str, float]:
    """Mask, seed and interaction variance of ``y`` from a crossed pilot (each mask under seeds 0 and 1)."""
    pairs = {}
    for i, slot, value in zip(data["index"], data["slot"], y):
        pairs.setdefault(int(i), [None, None])[int(slot)] = value
    table = np.array([v for v in pairs.values() if None not in v])  # (n_masks, 2)
    n_masks = len(table)
    grand = table.mean()
    mask_means, seed_means = table.mean(axis=1), table.mean(axis=0)
    ms_mask = 2 * ((mask_means - grand) ** 2).sum() / (n_masks - 1)
    ms_seed = n_masks * ((seed_means - grand) ** 2).sum() / 1
    resid = table - mask_means[:, None] - seed_means[None, :] + grand
    ms_inter = (resid ** 2).sum() / (n_masks - 1)
    return {"n_masks": n_masks, "mask": max(0.0, (ms_mask - ms_inter) / 2), "seed": max(0.0, (ms_seed - ms_inter) /
                                                                                        n_masks),
            "interaction": ms_inter}


def report(args) -> None:
    from transfer_core.analysis.influence import runs_for_reliability
    rng = np.random.default_rng(0)
    lines = ["| design | models | CPU s/model | output | estimator | split-half at n/half | models to 0.5 | "
             "models to 0.9 | CPU-h to 0.5 | CPU-h to 0.9 |", "|" + "---|" * 10]
    vc_lines = ["| design | models | CPU s/model | output | signal share of model variance | projected split-half "
                "at 250/half | models to 0.5 | models to 0.9 | CPU-h to 0.5 | CPU-h to 0.9 |", "|" + "---|" * 10]
    for folder in map(Path, args.folders):
        data = load(folder)
        design = data["design"]
        split_seed = int(design["params"]["data.split_seed"])
        cpu = float(np.median(data["cpu_s"]))
        keep = data["slot"] == 0  # crossed pilots: the first seed only, as a plain sweep would have it
        masks, seeds = data["mask"][keep], data["seed"][keep]
        n_half = len(masks) // 2
        for output in OUTPUTS:
            y_all = per_model(data, output, split_seed)
            if design.get("crossed"):
                parts = variance_parts(data, y_all)
                print(f"{design['name']} {output}: variance of the mean output (x1e4) mask "
                      f"{1e4 * parts['mask']:.3f}, seed {1e4 * parts['seed']:.3f}, interaction "
                      f"{1e4 * parts['interaction']:.3f} over {parts['n_masks']} masks")
            y = y_all[keep]
            signal, noise = components(masks, y)
            to5, to9 = (vc_models(signal, noise, len(y), t) for t in (0.5, 0.9))
            at250 = signal / (signal + noise * len(y) / 250) if signal > 0 else 0.0
            share = signal * len(masks[0]) / 4 / float(np.var(y, ddof=1))  # sum of class effects^2 / 4 over var(y)
            vc_lines.append(f"| {design['name']} | {len(y)} | {cpu:.1f} | {output} | {share:.2f} | {at250:.2f} | "
                            f"{to5:,.0f} | {to9:,.0f} | {to5 * cpu / 3600:,.1f} | {to9 * cpu / 3600:,.1f} |")
            for estimator in ESTIMATORS:
                if estimator == "dom_block" and len(np.unique(seeds)) == len(seeds):
                    continue  # every model its own seed: no blocks
                r = split_half(masks, y, seeds, estimator, n_half, args.repeats, rng)
                to5, to9 = runs_for_reliability(n_half, r, 0.5), runs_for_reliability(n_half, r, 0.9)
                hours = [n * cpu / 3600 for n in (to5, to9)]
                lines.append(f"| {design['name']} | {len(y)} | {cpu:.1f} | {output} | {estimator} | {r:.3f} at "
                             f"{n_half} | {to5:,.0f} | {to9:,.0f} | {hours[0]:,.1f} | {hours[1]:,.1f} |")
    print("Split-half Spearman of the validation class ranking, measured on random halves of the pilot:")
    print("\n".join(lines))
    print("\nVariance components (difference of means, every model of the pilot):")
    print("\n".join(vc_lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pilot", help="train a pilot of one design")
    p.add_argument("name", help="the design's name (the folder under --out)")
    p.add_argument("--profile", default="quick", help="profile the design starts from (default quick)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="config overrides, repeatable")
    p.add_argument("--n-models", type=int, default=120, help="masks to train (default 120)")
    p.add_argument("--seed-block", type=int, default=1,
                   help="models i and j share a training seed when i // B == j // B; 0: one seed for all (default 1)")
    p.add_argument("--crossed", action="store_true", help="train every mask under two seeds shared by all masks")
    p.add_argument("--workers", type=int, default=2, help="processes, one torch thread each (default 2)")
    p.add_argument("--out", default="outputs/signal", help="folder of pilots (default outputs/signal)")
    p.add_argument("--data-root", default=os.environ.get("TRANSFER_CORE_DATA"), help="[env: TRANSFER_CORE_DATA]")
    r = sub.add_parser("report", help="the table for BENCHMARKS.md from pilot folders")
    r.add_argument("folders", nargs="+")
    r.add_argument("--repeats", type=int, default=50, help="random splits per split-half (default 50)")
    args = parser.parse_args()
    pilot(args) if args.command == "pilot" else report(args)


if __name__ == "__main__":
    sys.exit(main())
