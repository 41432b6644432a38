"""Gradient attribution through the transfer (issue 29) against the 2,200-model retraining study.

The ground truth is the study committed in ``docs/results/`` (``quick`` profile, ``data.split_seed=2``):
``class_influence_validation.csv`` (the validation ranking half) and ``class_influence.csv`` (test), both on
correctness, and their split-half curves ``rank_stability*.csv``. This script trains its own models with
the library (no MLflow), featurizes them with :mod:`transfer_core.attribution`, and compares:

    python benchmarks/bench_attribution.py run --kind full --models 0:50 --name full-k1024
    python benchmarks/bench_attribution.py run --kind subset --models 0:10 --name subset-k1024 --proj-dim 1024
    python benchmarks/bench_attribution.py retrain-cost --n 3        # CPU-s of one retrained sweep model
    python benchmarks/bench_attribution.py report full-k1024 --ms 1,5,10,25,50 --plot outputs/attribution/plot.png

``run`` is resumable: trained members are cached under ``outputs/attribution/members/<kind>/`` (networks and
their training CPU seconds) and featurized scores under ``outputs/attribution/runs/<name>/``, one file per
model, so a killed run loses at most one model and another featurization reuses the trained members.
CPU seconds are process CPU time (every thread; ``--threads``, default 1 as in a sweep worker):
insensitive to other load on the machine, unlike wall time.

Targets: the validation ranking half (the examples ``data.validation_halves`` gives the study's analysis) as
one group, and the test split with one group per CIFAR-10 class; per example, test image 9609 (an exact
copy of a CIFAR-100 train image) and 99 other test images.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "outputs" / "attribution"
RESULTS = REPO / "docs" / "results"
LEAK_TEST_INDEX = 9609
LEAK_SOURCE_FILE = "pickup_truck/pickup_truck_s_000169"
N_STUDY_MODELS = 2200


def study_config():
    from transfer_core.config import build_config
    return build_config("quick", {"data.split_seed": 2})


def load(config):
    from common import environment_dirs
    from transfer_core.data import load_transfer_data
    return load_transfer_data(config.data, environment_dirs())


def attributor(name: str, data, config, settings, test_groups: str = "all"):
    """The Attributor of run ``name`` with the study's targets (``test_groups``: ``all``, one group, or
    ``classes``, one per CIFAR-10 class; with ``probe=refit`` each group costs a backward pass over the
    target train split)."""
    from transfer_core.attribution import Attributor
    from transfer_core.data import validation_halves
    ranking = validation_halves(data.target_val.labels.numpy(), config.data.split_seed)
    att = Attributor(data.source, settings, save_dir=OUT / "runs" / name)
    att.add_targets("validation", data.target_val, groups=np.where(ranking, 0, -1), group_names=["ranking"])
    rng = np.random.default_rng(0)
    others = rng.choice(np.setdiff1d(np.arange(len(data.target_test)), [LEAK_TEST_INDEX]), 99, replace=False)
    per_example = np.concatenate([[LEAK_TEST_INDEX], np.sort(others)])
    if test_groups == "classes":
        att.add_targets("test", data.target_test, groups=data.target_test.labels.numpy(),
                        group_names=list(data.target_test.class_names), per_example=per_example)
    else:
        att.add_targets("test", data.target_test, per_example=per_example)
    att.add_probe(data.target_train, config.transfer.weight_decay, config.transfer.label_smoothing)
    return att


def existing(name: str, data, config):
    """The Attributor of an existing run, with the settings and test groups its metadata records."""
    from transfer_core.attribution import AttributionSettings
    meta = json.loads((OUT / "runs" / name / "metadata.json").read_text())
    groups = "classes" if len(meta["targets"]["test"]["group_names"]) > 1 else "all"
    return attributor(name, data, config, AttributionSettings(**meta["settings"]), groups)


def member(config, data, kind: str, index: int):
    """Member ``index`` of ``kind``: from the cache, else trained and cached."""
    import torch
    from transfer_core.attribution import Member, train_member
    path = OUT / "members" / kind / f"model_{index:05d}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        return Member(saved["source"], saved["target"], saved["rows"], saved["labels"], data.source_norm,
                      saved["info"])
    m = train_member(config, data, kind, index, device="cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"source": m.source_network, "target": m.target_network, "rows": m.rows, "labels": m.labels,
                "info": m.info}, tmp)
    os.replace(tmp, path)
    return m


def settings_from(args):
    from transfer_core.attribution import AttributionSettings
    return AttributionSettings(proj_dim=args.proj_dim, projection=args.projection, seed=args.seed,
                               params=tuple(p for p in args.params.split(",") if p), chunk_size=args.chunk_size,
                               ridge=args.ridge, projection_dtype=args.projection_dtype,
                               target_output=args.target_output, probe=args.probe)


def cmd_run(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    config = study_config()
    data = load(config)
    settings = settings_from(args)
    att = attributor(args.name, data, config, settings, args.test_groups)
    (OUT / "runs" / args.name).mkdir(parents=True, exist_ok=True)
    (OUT / "runs" / args.name / "kind.txt").write_text(args.kind)
    start, stop = (int(x) for x in args.models.split(":"))
    for i in range(start, stop):
        if att.done(i):
            continue
        m = member(config, data, args.kind, i)
        out = att.featurize(i, m)
        info = out["info"]
        print(f"{args.name} model {i}: train {info['train_cpu_s']:.1f} CPU-s, featurize {info['featurize_cpu_s']:.1f}"
              f" CPU-s, target test acc {info['target_test_acc']:.4f}, load {os.getloadavg()[0]:.2f}", flush=True)


def cmd_retrain_cost(args) -> None:
    """CPU seconds of retrained sweep models: run_subset of the study's config, masks 0..n-1, one thread."""
    import torch
    from transfer_core.data import class_mask, run_seed
    from transfer_core.train import run_subset
    torch.set_num_threads(args.threads)
    config = study_config()
    data = load(config)
    costs = []
    for i in range(args.n):
        mask = class_mask(config.sweep_seed, i, data.source.n_classes, config.alpha)
        start = time.process_time()
        run_subset(config, data, mask, run_seed(config.sweep_seed, i), device="cpu")
        costs.append(time.process_time() - start)
        print(f"retrained model {i}: {costs[-1]:.2f} CPU-s (load {os.getloadavg()[0]:.2f})", flush=True)
    record = {"cpu_s": costs, "median_cpu_s": float(np.median(costs)), "threads": args.threads,
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": cpu_model()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "retrain_cost.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record))


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def truth() -> dict:
    """The study's rankings as influence vectors ``(100,)`` by class index."""
    import pandas as pd
    out = {}
    for key, file in (("validation", "class_influence_validation.csv"), ("test", "class_influence.csv")):
        table = pd.read_csv(RESULTS / file).sort_values("class_index")
        out[key] = table["influence"].to_numpy()
    return out


def cmd_report(args) -> None:
    import pandas as pd
    from transfer_core.attribution import spearman
    config = study_config()
    data = load(config)
    retrain = json.loads((OUT / "retrain_cost.json").read_text())["median_cpu_s"] if (
        OUT / "retrain_cost.json").is_file() else float("nan")
    study_cpu = N_STUDY_MODELS * retrain
    reference = truth()
    leak_source = data.source.file_names.index(LEAK_SOURCE_FILE)
    rows = []
    for name in args.names:
        att = existing(name, data, config)
        settings = att.settings
        ids = att.model_ids()
        ms = [m for m in (int(x) for x in args.ms.split(",")) if m <= len(ids)]
        for m in ms:
            res = att.finalize(ids[:m])
            cpu = res.cpu_seconds()
            val = res.class_influence("validation")
            test = res.class_influence("test")
            row = {"name": name, "kind": (OUT / "runs" / name / "kind.txt").read_text().strip(), "M": m,
                   "proj_dim": settings.proj_dim, "params": ",".join(settings.params) or "all",
                   "train_cpu_s": cpu["train"], "featurize_cpu_s": cpu["featurize"], "cpu_s": cpu["total"],
                   "x_less_cpu": study_cpu / cpu["total"],
                   "spearman_validation": spearman(val, reference["validation"]),
                   "spearman_test": spearman(test, reference["test"]),
                   "classes_scored": int(np.isfinite(val).sum())}
            try:
                row["leak_rank"] = res.source_rank("test", LEAK_TEST_INDEX, leak_source)
            except ValueError:
                row["leak_rank"] = None  # no model of this prefix kept the source image's class
            if 2 * m <= len(ids):
                halves = att.finalize(ids[:2 * m]).split_half("validation", per_half=m, n_splits=args.splits)
                row["split_half_validation"] = float(np.nanmean(halves))
                row["split_half_validation_std"] = float(np.nanstd(halves))
                halves = att.finalize(ids[:2 * m]).split_half("test", per_half=m, n_splits=args.splits)
                row["split_half_test"] = float(np.nanmean(halves))
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv or OUT / "report.csv", index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))
    print(f"retraining: {retrain:.2f} CPU-s a model (median of retrain_cost.json), {N_STUDY_MODELS} models = "
          f"{study_cpu:.0f} CPU-s; load average now {os.getloadavg()}; {cpu_model()}")
    if args.plot:
        plot(table, retrain, Path(args.plot))


def plot(table, retrain_cpu_s: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    stability = pd.read_csv(RESULTS / "rank_stability_validation.csv")
    ax.plot(stability["n_runs_per_half"] * retrain_cpu_s, stability["spearman_mean"], "k-o", ms=4,
            label="retraining: split-half (validation), CPU of one half")
    for name, rows in table.groupby("name", sort=False):
        line, = ax.plot(rows["cpu_s"], rows["spearman_validation"], "-o", ms=4,
                        label=f"{name}: vs 2,200-model validation ranking")
        ax.plot(rows["cpu_s"], rows["spearman_test"], "--s", ms=3, color=line.get_color(),
                label=f"{name}: vs 2,200-model test ranking")
        if "split_half_validation" in rows:
            ax.plot(rows["cpu_s"], rows["split_half_validation"], ":^", ms=3, color=line.get_color(),
                    label=f"{name}: own split-half (validation)")
        for _, r in rows.iterrows():
            ax.annotate(f"M={r['M']}", (r["cpu_s"], r["spearman_validation"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.axhline(0.58, color="grey", lw=0.8, ls="--")
    ax.axvline(N_STUDY_MODELS * retrain_cpu_s / 20, color="grey", lw=0.8, ls=":")
    ax.text(N_STUDY_MODELS * retrain_cpu_s / 20, 0.02, " 20x less CPU than 2,200 models", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds (training + featurizing; retraining: models x CPU-s per model)")
    ax.set_ylabel("Spearman of the 100-class ranking")
    ax.set_title("Gradient attribution vs retraining, CIFAR-100 -> CIFAR-10 (quick, split seed 2)", fontsize=9)
    ax.legend(fontsize=6.5, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    print(f"plot: {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train (cached) and featurize models")
    run.add_argument("--kind", default="full", choices=["subset", "full", "half_examples"])
    run.add_argument("--models", default="0:10", help="START:STOP model indices")
    run.add_argument("--name", required=True)
    run.add_argument("--proj-dim", type=int, default=1024)
    run.add_argument("--projection", default="gaussian")
    run.add_argument("--projection-dtype", default="float32")
    run.add_argument("--params", default="", help="comma-separated backbone parameter prefixes (empty: all)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--chunk-size", type=int, default=256)
    run.add_argument("--ridge", type=float, default=0.0)
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--target-output", default="margin", choices=["margin", "prob"])
    run.add_argument("--probe", default="fixed", choices=["fixed", "refit"])
    run.add_argument("--test-groups", default="all", choices=["all", "classes"])
    cost = sub.add_parser("retrain-cost", help="CPU seconds of retrained sweep models")
    cost.add_argument("--n", type=int, default=3)
    cost.add_argument("--threads", type=int, default=1)
    report = sub.add_parser("report", help="the agreement table (and plot)")
    report.add_argument("names", nargs="+")
    report.add_argument("--ms", default="1,5,10,25,50,100")
    report.add_argument("--splits", type=int, default=20)
    report.add_argument("--csv", default=None)
    report.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    {"run": cmd_run, "retrain-cost": cmd_retrain_cost, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
