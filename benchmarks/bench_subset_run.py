"""Time one `quick` subset run, phase by phase, against a straightforward implementation.

The straightforward recipe is what research code usually does: a torchvision DataLoader
over PIL images with PIL transforms, and fixed-feature transfer that re-runs the frozen
backbone over the target images in every epoch of head training. Same data, same network,
same optimiser and schedule, same seeds.

    python benchmarks/bench_subset_run.py [--seeds 2] [--threads 2]

Prints per-phase seconds, target test accuracy, and the speed-up.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from transfer_core.config import build_config
from transfer_core.data import load_split, load_transfer_data
from transfer_core.train.models import build_model
from transfer_core.data import class_mask
from transfer_core.train.loop import triangular_lr
from transfer_core.train import run_subset, source_subset


class PILDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images.permute(0, 2, 3, 1).numpy(), labels.tolist(), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def sgd_epochs(model, loader_fn, epochs, lr, wd, smoothing, peak_epoch, params=None):
    params = list(params if params is not None else model.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    steps = None
    step = 0
    for epoch in range(epochs):
        for x, y in loader_fn():
            if steps is None:
                steps = epochs * math.ceil(loader_fn.n / x.shape[0])
                peak = (peak_epoch or epochs / 5) * steps / epochs
            for g in opt.param_groups:
                g["lr"] = lr * triangular_lr(step, steps, peak)
            loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1


def straightforward_run(config, data, mask, seed):
    """The baseline: DataLoader + PIL transforms; frozen backbone re-run every head epoch."""
    torch.manual_seed(seed)
    p, t = config.pretrain, config.transfer
    timings = {}
    start = time.perf_counter()
    source, kept = source_subset(data.source, mask)
    mean = (source.images.float().mean((0, 2, 3)) / 255).tolist()
    std = (source.images.float().std((0, 2, 3)) / 255).tolist()
    res = config.data.resolution
    train_tf = transforms.Compose([transforms.RandomCrop(res, padding=2, padding_mode="reflect"),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                   transforms.Normalize(mean, std)])
    plain_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    model = build_model(p.arch, len(kept), p.width)
    src_ds = PILDataset(source.images, source.labels, train_tf)

    def src_loader():
        return DataLoader(src_ds, batch_size=p.batch_size, shuffle=True)
    src_loader.n = len(src_ds)
    model.train()
    sgd_epochs(model, src_loader, p.epochs, p.lr, p.weight_decay, p.label_smoothing, p.peak_epoch)
    timings["pretrain_s"] = time.perf_counter() - start

    start = time.perf_counter()
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    head = nn.Linear(model.feature_dim, data.target_train.n_classes)
    tgt_ds = PILDataset(data.target_train.images, data.target_train.labels, plain_tf)

    class Probe(nn.Module):
        def forward(self, x):
            with torch.no_grad():
                f = model.features(x)
            return head(f)

    def tgt_loader():
        return DataLoader(tgt_ds, batch_size=t.batch_size, shuffle=True)
    tgt_loader.n = len(tgt_ds)
    sgd_epochs(Probe(), tgt_loader, t.epochs, t.lr, t.weight_decay, t.label_smoothing, 0.0, head.parameters())
    timings["transfer_s"] = time.perf_counter() - start

    start = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(PILDataset(data.target_test.images, data.target_test.labels, plain_tf),
                               batch_size=1024):
            correct += (head(model.features(x)).argmax(1) == y).sum().item()
    timings["evaluate_s"] = time.perf_counter() - start
    return correct / len(data.target_test), timings


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2, help="runs per implementation")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--profile", default="quick")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = build_config(args.profile)
    data = load_transfer_data(config.data)
    n_classes = data.source.n_classes
    rows = {"transfer_core": [], "straightforward": []}
    for seed in range(args.seeds):
        mask = class_mask(0, seed, n_classes, config.alpha)
        start = time.perf_counter()
        result = run_subset(config, data, mask, seed)
        rows["transfer_core"].append((time.perf_counter() - start, result.metrics["target_test_acc"], result.timings))
        start = time.perf_counter()
        acc, timings = straightforward_run(config, data, mask, seed)
        rows["straightforward"].append((time.perf_counter() - start, acc, timings))
    print(f"profile={args.profile} threads={args.threads} seeds={args.seeds}")
    for name, runs in rows.items():
        total = np.mean([r[0] for r in runs])
        acc = np.mean([r[1] for r in runs])
        phases = {k: np.mean([r[2][k] for r in runs]) for k in runs[0][2]}
        print(f"{name:16s} total {total:6.1f} s  " + "  ".join(f"{k} {v:5.1f}" for k, v in phases.items())
              + f"  target_test_acc {acc:.4f}")
    ours = np.mean([r[0] for r in rows["transfer_core"]])
    base = np.mean([r[0] for r in rows["straightforward"]])
    gap = 100 * (np.mean([r[1] for r in rows["transfer_core"]]) - np.mean([r[1] for r in rows["straightforward"]]))
    print(f"speed-up {base / ours:.1f}x   accuracy difference {gap:+.2f} points (transfer_core - straightforward)")


if __name__ == "__main__":
    main()
