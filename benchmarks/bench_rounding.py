"""Per-seed effects of the planted classes, the noise the statistical tests' margins are stated against.

The registry and counterfactual tests train the synthetic profile's full source and the source minus
one class, paired by seed, and test the paired gain. A seed's gain depends on whether each model takes
the synthetic target's watermark shortcut, and that depends on the CPU's float rounding as well as on
the seed: run this under each of torch's kernel paths (``ATEN_CPU_CAPABILITY=default|avx2|avx512``)
to see other draws of the same seeds.

    ATEN_CPU_CAPABILITY=default python benchmarks/bench_rounding.py --seeds 16 --out default.json
    python benchmarks/bench_rounding.py --pool default.json avx512.json --resample 6 24

Trains, per seed index ``s`` (training seed ``run_seed(sweep_seed, s)``, as a counterfactual grid
does), the full source and the source minus each ``--remove`` class (``random``: the grid's random
removal of seed ``s``), and prints each run's selection-half and test accuracy. ``--pool`` reads such
files (each file's seeds are other draws) and prints, per removed class, the gain's mean and standard
deviation, and how often the champion gate's 97.5% t-interval over ``n`` resampled seeds does not lie above
zero (a pruned champion fails; for a class without effect, the full source rightly stays).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def train(args) -> None:
    from transfer_core.config import build_config, parse_overrides
    from transfer_core.counterfactual.grid import removal_set
    from transfer_core.data import load_split, load_transfer_data, run_seed, validation_halves
    from transfer_core.data.synthetic import SOURCE_CLASSES
    from transfer_core.train import run_subset

    torch.set_num_threads(args.threads)
    config = build_config("synthetic", parse_overrides(args.set))
    data = load_transfer_data(config.data)
    source_test = load_split(config.data.source, "test", config.data.resolution)
    selection = ~validation_halves(data.target_val.labels.numpy(), config.data.split_seed)
    tag = f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s), {args.set or 'profile'}"
    print(tag, flush=True)
    rows, start = [], time.perf_counter()
    for s in range(args.first, args.seeds):
        for name in ["full", *args.remove]:
            mask = np.ones(len(SOURCE_CLASSES), bool)
            if name == "random":
                mask[removal_set("random", 1, s, np.arange(len(mask)), config.sweep_seed)] = False
            elif name != "full":
                mask[SOURCE_CLASSES.index(name)] = False
            result = run_subset(config, data, mask, run_seed(config.sweep_seed, s), source_test, "cpu")
            rows.append({"seed": s, "removed": name, "select": float(result.val_outputs["correct"][selection].mean()),
                         "test": result.metrics["target_test_acc"]})
            print(f"seed {s:2d} {name:12s} selection half {rows[-1]['select']:.3f}  test {rows[-1]['test']:.3f}",
                  flush=True)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"tag": tag, "rows": rows}, f)


def pool(args) -> None:
    from scipy import stats

    gains: dict[str, list[float]] = {}
    for path in args.pool:
        with open(path) as f:
            rows = json.load(f)["rows"]
        full = {r["seed"]: r[args.metric] for r in rows if r["removed"] == "full"}
        for r in rows:
            if r["removed"] != "full":
                gains.setdefault(r["removed"], []).append(r[args.metric] - full[r["seed"]])
    rng = np.random.default_rng(0)
    for name, values in gains.items():
        x = np.asarray(values)
        line = f"-{name}: {len(x)} gains, mean {x.mean():+.3f}, sd {x.std(ddof=1):.3f}; the interval misses zero at"
        for n in args.resample:
            d = rng.choice(x, (20_000, n))
            low = d.mean(1) - stats.t.ppf(1 - 0.025 / 2, n - 1) * d.std(1, ddof=1) / np.sqrt(n)
            line += f" {n} seeds: {np.mean(low <= 0):.2%} of draws (median low end {np.median(low):+.3f});"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16, help="seed indices first..seeds-1")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--remove", nargs="+", default=["misleading", "noise_gray"],
                        help="source classes removed one at a time (or 'random')")
    parser.add_argument("--set", default="", help="profile overrides, e.g. 'pretrain.epochs=8'")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", help="write the runs' accuracies to this JSON file")
    parser.add_argument("--pool", nargs="+", help="summarise these files instead of training")
    parser.add_argument("--metric", default="select", choices=["select", "test"])
    parser.add_argument("--resample", type=int, nargs="+", default=[6, 12, 16, 24])
    args = parser.parse_args()
    pool(args) if args.pool else train(args)


if __name__ == "__main__":
    main()
