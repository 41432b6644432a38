"""Time one subset run as a user waits for it: the whole process, started from the shell.

Ours: ``transfer-core subset-run --profile quick --index I`` (start-up, data loading, MLflow
logging and the checkpoint included) into one sqlite store that the first run creates, as
in a fresh clone. The plain recipe: the same work written the way research code usually is,
also a process of its own: torchvision ``ImageFolder`` over the extracted CIFAR trees, PIL
transforms (resize, random crop, flip) in a ``DataLoader``, ``torch.optim.SGD``, and a
fixed-feature probe that re-runs the frozen backbone in every epoch. Both use the same
config (the profile and ``--set`` overrides): the same classes, images, network, recipe and
seeds. Runs alternate (ours, plain, ours, plain, ...) so that load hits both alike.

    TRANSFER_CORE_DATA=../shared/data python benchmarks/bench_subset_run.py [--runs 3] [--skip-plain]

Prints every run's wall time and accuracies, then the median wall times, the speed-up, and
the load average before and after. Run it on an idle machine: on a busy one, the 2-thread
training of both contends with everything else.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CIFAR100_MEAN, CIFAR100_STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)  # what research code hard-codes


def ours_command(profile: str, overrides: list[str], index: int, uri: str) -> list[str]:
    script = Path(sys.executable).parent / "transfer-core"  # the console script, as a user types it
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "transfer_core.cli"]
    return head + ["subset-run", "--profile", profile, "--index", str(index), "--tracking-uri", uri,
                   *[a for o in overrides for a in ("--set", o)]]


def run_ours(profile: str, overrides: list[str], index: int, uri: str, cwd: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run(ours_command(profile, overrides, index, uri), cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"transfer-core subset-run failed:\n{done.stderr[-3000:]}")
    metrics = dict(re.findall(r"(\w+)=([0-9.]+)", done.stdout.split("FINISHED:", 1)[1]))
    return {"wall_s": wall, **{k: float(v) for k, v in metrics.items()}}


def run_plain(profile: str, overrides: list[str], index: int, threads: int | None) -> dict:
    command = [sys.executable, __file__, "--plain-worker", "--profile", profile, "--index", str(index),
               *[a for o in overrides for a in ("--set", o)]]
    if threads:
        command += ["--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the plain recipe failed:\n{done.stderr[-3000:]}")
    return {"wall_s": wall, **json.loads(done.stdout.strip().splitlines()[-1])}


def extracted_trees(*names: str) -> Path:
    """A folder holding ``<name>/{train,test}/<class>/<image>`` for each CIFAR name: the data root's
    own trees, else the archives extracted once under the cache (as a plain recipe's user does)."""
    from common import environment_dirs

    dirs = environment_dirs()
    if dirs.root is None:
        sys.exit("set TRANSFER_CORE_DATA to the folder holding cifar10.tar.gz and cifar100.tar.gz")
    root = Path(dirs.root)
    if all((root / name / "train").is_dir() for name in names):
        return root
    extracted = dirs.cache_path("extracted")
    for name in names:
        if not (extracted / f".{name}.done").exists():
            extracted.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "-xzf", str(root / f"{name}.tar.gz"), "-C", str(extracted)], check=True)
            (extracted / f".{name}.done").touch()
    return extracted


def plain_worker(profile: str, overrides: list[str], index: int, threads: int | None) -> None:
    """The plain recipe, in this process; prints one JSON line of accuracies and phase times."""
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from transfer_core.config import build_config, parse_overrides
    from transfer_core.data import class_mask, run_seed, sample_per_class
    from transfer_core.train.models import build_model

    if threads:
        torch.set_num_threads(threads)
    config = build_config(profile, parse_overrides(overrides))
    d, p, t = config.data, config.pretrain, config.transfer
    root = extracted_trees(d.source, d.target)
    seed = run_seed(config.sweep_seed, index)
    torch.manual_seed(seed)
    timings = {}
    start = time.perf_counter()
    resize = transforms.Resize(d.resolution)
    normalize = transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)
    plain = transforms.Compose([resize, transforms.ToTensor(), normalize])
    augmented = transforms.Compose([resize, transforms.RandomCrop(d.resolution, padding=2, padding_mode="reflect"),
                                    transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])

    # the same images as ours: the kept classes of the sampled source, the target's train/val split
    source = datasets.ImageFolder(str(root / d.source / "train"), transform=augmented)
    labels = torch.tensor(source.targets)
    mask = torch.from_numpy(class_mask(config.sweep_seed, index, len(source.classes), config.alpha))
    sampled = sample_per_class(labels, d.source_images_per_class, d.split_seed)
    keep = sampled[mask[labels[sampled]]]
    relabel = torch.cumsum(mask.long(), 0) - 1
    source.target_transform = lambda y: int(relabel[y])
    target = datasets.ImageFolder(str(root / d.target / "train"), transform=plain)
    order = torch.randperm(len(target), generator=torch.Generator().manual_seed(d.split_seed + 1))
    if d.target_train_images:
        order = order[:d.target_train_images]
    n_val = max(1, int(round(d.val_fraction * len(order))))
    val_set, train_set = Subset(target, order[:n_val].tolist()), Subset(target, order[n_val:].tolist())
    test_set = datasets.ImageFolder(str(root / d.target / "test"), transform=plain)
    source_test = datasets.ImageFolder(str(root / d.source / "test"), transform=plain)
    source_test.target_transform = source.target_transform
    held_out = Subset(source_test, [i for i, y in enumerate(source_test.targets) if mask[y]])

    def sgd(params, lr, momentum, wd, epochs, steps_per_epoch, peak_epoch):
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=wd)
        total, peak = epochs * steps_per_epoch, (peak_epoch or epochs / 5) * steps_per_epoch
        return opt, torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / (peak + 1) if s < peak else max(0.0, (total - s) / max(1.0, total - peak)))

    net = build_model(p.arch, int(mask.sum()), p.width)
    loader = DataLoader(Subset(source, keep.tolist()), batch_size=p.batch_size, shuffle=True)
    opt, schedule = sgd(net.parameters(), p.lr, p.momentum, p.weight_decay, p.epochs, len(loader), p.peak_epoch)
    net.train()
    for _ in range(p.epochs):
        for x, y in loader:
            loss = F.cross_entropy(net(x), y, label_smoothing=p.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    timings["pretrain_s"] = time.perf_counter() - start

    def accuracy(model, dataset):
        correct = 0
        with torch.no_grad():
            for x, y in DataLoader(dataset, batch_size=1024):
                correct += (model(x).argmax(1) == y).sum().item()
        return correct / len(dataset)

    net.eval()
    source_acc = accuracy(net, held_out)
    start = time.perf_counter()
    for param in net.parameters():
        param.requires_grad_(False)
    head = nn.Linear(net.feature_dim, len(target.classes))
    loader = DataLoader(train_set, batch_size=t.batch_size, shuffle=True)
    opt, schedule = sgd(head.parameters(), t.lr, 0.9, t.weight_decay, t.epochs, len(loader), 0.0)
    for _ in range(t.epochs):  # the frozen backbone runs again in every epoch
        for x, y in loader:
            with torch.no_grad():
                features = net.features(x)
            loss = F.cross_entropy(head(features), y, label_smoothing=t.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    timings["transfer_s"] = time.perf_counter() - start
    start = time.perf_counter()
    net.head = head
    val_acc, test_acc = accuracy(net, val_set), accuracy(net, test_set)
    timings["evaluate_s"] = time.perf_counter() - start
    assert math.isfinite(loss.item())
    print(json.dumps({"source_acc": source_acc, "target_val_acc": val_acc, "target_test_acc": test_acc, **timings}))


def summary(name: str, rows: list[dict]) -> str:
    walls = [r["wall_s"] for r in rows]
    phases = " ".join(f"{k} {statistics.median(r[k] for r in rows):.1f}" for k in ("pretrain_s", "transfer_s",
                                                                                   "evaluate_s"))
    accs = " ".join(f"{k} {100 * statistics.mean(r[k] for r in rows):.2f}" for k in ("target_val_acc",
                                                                                    "target_test_acc"))
    return (f"{name:6s} median {statistics.median(walls):6.1f} s (min {min(walls):.1f}, max {max(walls):.1f}; "
            f"phases, median: {phases})  mean {accs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each (models 0..runs-1)")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a config override k=v")
    parser.add_argument("--skip-plain", action="store_true", help="time ours only")
    parser.add_argument("--store", type=Path, default=None, help="folder of the sqlite store (default: a new one)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the plain recipe (default: "
                                                                   "torch's, as for ours)")
    parser.add_argument("--plain-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_worker:
        plain_worker(args.profile, args.overrides, args.index, args.threads)
        return
    if not os.environ.get("TRANSFER_CORE_DATA"):
        os.environ["TRANSFER_CORE_DATA"] = str(REPO.parent / "shared" / "data")
    store = args.store or Path(tempfile.mkdtemp(prefix="bench_subset_run_"))
    store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store.resolve() / 'mlflow.db'}"
    load_before = os.getloadavg()
    print(f"store {store} ({'new' if not (store / 'mlflow.db').exists() else 'existing'}); "
          f"command: {' '.join(ours_command(args.profile, args.overrides, 0, uri))}", flush=True)
    rows: dict[str, list[dict]] = {"ours": [], "plain": []}
    for index in range(args.runs):
        rows["ours"].append(run_ours(args.profile, args.overrides, index, uri, store))
        print(f"ours  index {index}: {rows['ours'][-1]['wall_s']:6.1f} s  " + _metrics(rows["ours"][-1]), flush=True)
        if not args.skip_plain:
            rows["plain"].append(run_plain(args.profile, args.overrides, index, args.threads))
            print(f"plain index {index}: {rows['plain'][-1]['wall_s']:6.1f} s  " + _metrics(rows["plain"][-1]),
                  flush=True)
    import torch
    print(f"\nprofile {args.profile} {' '.join(args.overrides)}; {args.runs} runs each; {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {time.strftime('%Y-%m-%d %H:%M')}")
    print(summary("ours", rows["ours"]) + "  (the first run created the store)")
    if rows["plain"]:
        print(summary("plain", rows["plain"]))
        ratio = statistics.median(r["wall_s"] for r in rows["plain"]) / statistics.median(
            r["wall_s"] for r in rows["ours"])
        gap = 100 * (statistics.mean(r["target_test_acc"] for r in rows["ours"])
                     - statistics.mean(r["target_test_acc"] for r in rows["plain"]))
        print(f"speed-up {ratio:.1f}x (median wall, plain / ours); test accuracy {gap:+.2f} points (ours - plain)")
    load_after = os.getloadavg()
    print("load average before", " ".join(f"{x:.2f}" for x in load_before), "| after",
          " ".join(f"{x:.2f}" for x in load_after))


def _metrics(row: dict) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "wall_s")


if __name__ == "__main__":
    main()
