"""Packed training throughput: models per hour for packs of N, peak memory, accuracy against unpacked runs.

    python benchmarks/bench_gpu.py            # a GPU: the cifar profile, N = 1, 8, 32 and the largest that fits
    python benchmarks/bench_gpu.py --tiny     # any CPU: the same script on a tiny synthetic config (a smoke run)
    python benchmarks/bench_gpu.py --profile quick --packs 1,4 --repeat 2 --check 0 --threads 1   # CPU A/B

Each measurement trains one pack of N models of the profile with
:func:`transfer_core.train.run_pack` (pretraining on a random half of the source classes,
transfer, scoring on the target's validation and test splits; no MLflow) and reports:

- models per hour: N / (wall time of the pack) x 3600; the data are on the device before
  the clock starts (once per process, as in a sweep's worker);
- on a CPU, also CPU seconds per model (this process's user + system time): unlike wall
  time, it hardly depends on what else the machine runs, so it compares N on a shared machine;
- peak device memory (GPU only) beside the estimate that ``--pack auto`` sizes packs with;
- the mean target test accuracy of the pack's models.

``max`` in ``--packs`` is the largest pack the memory estimate allows (``--pack auto``).
``--repeat R`` measures the list R times, alternating, and reports medians: on a shared
machine, interleaved A/B runs see the same load. Then ``--check K`` trains the first K
models of the first pack larger than one alone, with :func:`transfer_core.train.run_subset`
(the unpacked path), and checks that each packed model's test accuracy is within
``--tolerance`` points of its unpacked twin (packing only reorders floating-point work;
on a GPU, bf16 autocast makes that reordering larger).
Paste the printed table into BENCHMARKS.md with the machine, the load average and the date.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch

from common import environment_dirs
from transfer_core.config import build_config, parse_overrides
from transfer_core.data import DataError, class_mask, load_split, load_transfer_data, run_seed
from transfer_core.train import DeviceData, pack_budget, pick_device, run_pack, run_subset

TINY = {"pretrain.epochs": "1", "transfer.epochs": "2"}


def gib(value: float) -> str:
    return "n/a (CPU)" if value != value else f"{value:.2f} GiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cifar")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--packs", default="1,8,32,max",
                        help="pack sizes, comma-separated; max = the largest that fits")
    parser.add_argument("--repeat", type=int, default=1, help="measure the list this many times, alternating")
    parser.add_argument("--check", type=int, default=2, help="models to compare with unpacked training (0: none)")
    parser.add_argument("--tolerance", type=float, default=2.0,
                        help="points of test accuracy a packed model may differ by")
    parser.add_argument("--compile", action="store_true", help="torch.compile the packed training steps")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--tiny", action="store_true", help="synthetic profile, 1 pretraining epoch, packs 1,2,4")
    args = parser.parse_args()
    if args.tiny:
        args.profile, args.packs = "synthetic", "1,2,4"
        args.overrides = [f"{k}={v}" for k, v in TINY.items()] + args.overrides
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.overrides:
        overrides.update(parse_overrides(item))
    config = build_config(args.profile, overrides)
    device = pick_device()
    dirs = environment_dirs()
    data = load_transfer_data(config.data, dirs)
    try:
        source_test = load_split(config.data.source, "test", config.data.resolution, dirs)
    except DataError:
        source_test = None
    budget = pack_budget(config, data, device, n_source_test=len(source_test) if source_test else 0)
    sizes = [budget.auto() if p.strip() == "max" else int(p) for p in args.packs.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, " \
        f"{torch.get_num_threads()} torch threads)"
    print(f"# bench_gpu: {args.profile} {overrides or ''} on {name}, torch {torch.__version__}, "
          f"{datetime.date.today()}, load average {os.getloadavg()[0]:.1f}, compile={args.compile}")
    print(f"# memory estimate: {budget.per_model / 2 ** 20:.0f} MiB per model + {budget.shared / 2 ** 30:.2f} GiB "
          f"of data; {budget.available / 2 ** 30:.1f} GiB free; largest pack {budget.largest()}")

    start = time.perf_counter()
    on_device = DeviceData(data, device, source_test)
    print(f"# data on the device in {time.perf_counter() - start:.1f} s")
    k = data.source.n_classes
    masks = [class_mask(config.sweep_seed, i, k, config.alpha) for i in range(max(sizes))]
    seeds = [run_seed(config.sweep_seed, i) for i in range(max(sizes))]
    sizes = list(dict.fromkeys(sizes))
    measured: dict[int, list[tuple[float, float, float, float]]] = {n: [] for n in sizes}  # wall, cpu, peak, acc
    packed_acc: dict[int, list[float]] = {}
    for _ in range(args.repeat):
        for n in sizes:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            results = run_pack(config, data, masks[:n], seeds[:n], source_test, device, on_device, args.compile)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
            accs = [r.metrics["target_test_acc"] for r in results if not isinstance(r, Exception)]
            failed = sum(isinstance(r, Exception) for r in results)
            measured[n].append((wall, cpu, peak, statistics.fmean(accs) if accs else float("nan")))
            packed_acc.setdefault(n, accs)
            print(f"#   N={n}: {wall:.1f} s, {n / wall * 3600:.0f} models/h, {cpu / n:.1f} CPU s per model, "
                  f"peak {gib(peak)}, mean test acc {measured[n][-1][3]:.4f}"
                  + (f", {failed} diverged" if failed else ""), flush=True)

    print("\n| N (models per pack) | models per hour | wall per pack (s) | CPU s per model | peak memory "
          "| estimate (GiB) | mean target test acc |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        wall = statistics.median(m[0] for m in measured[n])
        cpu = statistics.median(m[1] for m in measured[n]) / n
        peak = max(m[2] for m in measured[n])
        estimate = (budget.shared + n * budget.per_model) / 2 ** 30
        print(f"| {n} | {n / wall * 3600:,.0f} | {wall:.1f} | {cpu:.1f} | {gib(peak)} | {estimate:.2f} | "
              f"{measured[n][0][3]:.4f} |")

    packed_n = next((n for n in sizes if n > 1), None)
    if not args.check or packed_n is None:
        return 0
    worst = 0.0
    for i in range(min(args.check, packed_n)):
        alone = run_subset(config, data, masks[i], seeds[i], source_test, device)
        diff = 100 * abs(alone.metrics["target_test_acc"] - packed_acc[packed_n][i])
        worst = max(worst, diff)
        print(f"# model {i}: test acc packed (N={packed_n}) {packed_acc[packed_n][i]:.4f}, "
              f"alone {alone.metrics['target_test_acc']:.4f}, difference {diff:.2f} points")
    ok = worst <= args.tolerance
    print(f"# packed vs unpacked: largest difference {worst:.2f} points (tolerance {args.tolerance}): "
          f"{'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
