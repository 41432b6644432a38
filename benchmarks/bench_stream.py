"""Streaming at ImageNet scale: decode + augmentation throughput per core, and memory that does not grow.

1. Generates an ImageFolder tree of JPEGs of ImageNet-like sizes (each side 300 to 500 px) under
   ``--workdir`` (kept for reruns), and prepares it (``transfer-core prepare``'s function: JPEG,
   longest side 256), timing the preparation.
2. **Decode + augmentation per core**: one thread decodes prepared images to R px and pads, crops and
   flips them on tensors (the streamed training path's work before the network), for R in
   ``--resolutions``; images/s on one core.
3. **Decode work per model of a pack**: images decoded per epoch for a pack of N models (N = 1, 2, 4, 8)
   against what N models alone would decode.
4. **Peak memory of a short sweep**: ``transfer-core sweep`` (in its own process, one worker, a pack of
   one) on the tree at ``--sweep-resolution``, each model on ``--sweep-images-per-class`` images of its
   kept classes; its peak resident memory against the decoded size of the tree at that resolution (the
   in-memory path decoded all of it). The source's normalisation statistics are computed again (their
   cached file is removed first), as on a first sweep.
5. With a GPU: models per hour of packed training on the imagenet64 recipe (not on a CPU).

    TRANSFER_CORE_CACHE=/tmp/streambench/cache python benchmarks/bench_stream.py --images 20000
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_tree(root: Path, n_images: int, n_classes: int) -> Path:
    """``root/{train,test}/class_NNN/img_NNNNN.JPEG``, ImageNet-like sides (300-500 px); kept if present."""
    from transfer_core.data.synthetic import write_image_folder
    marker = root / f".done-{n_images}-{n_classes}"
    if not marker.is_file():
        per_class = max(1, n_images // n_classes)
        write_image_folder(root, n_classes, per_class, sizes=(300, 500), seed=0, quality=90)
        marker.touch()
    return root


def decode_rate(split, resolution: int, n: int) -> float:
    """Images per second on one thread: decode to ``resolution`` px, then pad, random crop and flip."""
    import torch
    import torch.nn.functional as F

    from transfer_core.train.loop import CROP_PADDING, augment_block
    torch.set_num_threads(1)
    rows = np.random.default_rng(0).permutation(len(split))[:n]
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for i in range(0, n, 256):
        x = split.decode(rows[i:i + 256], resolution).float()
        augment_block(F.pad(x, (CROP_PADDING,) * 4, mode="reflect"), resolution, generator)
    return n / (time.perf_counter() - start)


def decode_and_share(split, args) -> None:
    """Steps 2 and 3: decode + augmentation per core, and the decode work per model of a pack."""
    from transfer_core.data import class_mask
    from transfer_core.data.stream import SharedStream, StreamedSource

    print("\n| resolution | decode + augmentation, images/s on one core |\n|---|---|")
    for r in args.resolutions:
        print(f"| {r} px | {decode_rate(split, r, args.decode_images):,.0f} |", flush=True)
    source = StreamedSource(split, np.arange(len(split)), 16)
    print("\n| models in the pack | images decoded per epoch | per model | alone, per model |\n|---|---|---|---|")
    for n in (1, 2, 4, 8):
        stream = SharedStream(source, [class_mask(0, i, args.classes) for i in range(n)], batch_size=256)
        counts = stream.keeps.any(axis=0).sum()  # what one epoch decodes: images any member keeps
        print(f"| {n} | {counts:,} | {counts / n:,.0f} | {stream.n_images:,} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000, help="train images in the generated tree")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/streambench"))
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 160])
    parser.add_argument("--decode-images", type=int, default=2048, help="images timed per resolution")
    parser.add_argument("--sweep-resolution", type=int, default=224)
    parser.add_argument("--sweep-models", type=int, default=2)
    parser.add_argument("--sweep-images-per-class", type=int, default=20,
                        help="images per kept class a sweep model trains on (0: all; all at 224 px took over 14 "
                             "minutes a model on 2 CPU cores)")
    parser.add_argument("--sweep-batch", type=int, default=16, help="pretraining batch size of the sweep")
    parser.add_argument("--skip-to-sweep", action="store_true", help="only step 4, on a tree made before")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFER_CORE_CACHE", str(args.workdir / "cache"))
    from transfer_core.data.prepared import PreparedSplit, prepare

    print(f"{time.strftime('%Y-%m-%d %H:%M')} load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} cores", flush=True)
    start = time.perf_counter()
    tree = make_tree(args.workdir / "tree", args.images, args.classes)
    print(f"tree: {args.images} JPEGs, {args.classes} classes, {time.perf_counter() - start:.0f} s to generate "
          "(or found)", flush=True)
    start = time.perf_counter()
    folder = prepare(tree / "train", root=Path(os.environ["TRANSFER_CORE_CACHE"]) / "prepared", progress=False)
    split = PreparedSplit(folder)
    print(f"prepare: {len(split)} images in {time.perf_counter() - start:.1f} s ({os.cpu_count()} threads; "
          f"{split.offsets[-1] / 2 ** 20:.0f} MiB of JPEG, longest side 256)", flush=True)

    if not args.skip_to_sweep:
        decode_and_share(split, args)

    for stats in folder.glob("norm-*.npy"):  # the peak includes a first sweep's normalisation statistics
        stats.unlink()
    store = args.workdir / f"sweep-{int(time.time())}"
    store.mkdir(parents=True)
    sets = [f"data.source=imagefolder:{tree}", f"data.resolution={args.sweep_resolution}", "data.source_store=jpeg",
            "data.target=synthetic-target", "data.target_resolution=32", "pretrain.arch=resnet_small",
            "pretrain.width=8", "pretrain.epochs=1", "pretrain.peak_epoch=0.5",
            f"pretrain.batch_size={args.sweep_batch}", "transfer.epochs=2",
            f"data.source_images_per_class={args.sweep_images_per_class}"]
    command = [sys.executable, "-m", "transfer_core.cli", "sweep", "--profile", "imagenet", "--n-models",
               str(args.sweep_models), "--workers", "1", "--pack", "1", "--no-progress",
               "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}", *sum((["--set", s] for s in sets), [])]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=store, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the sweep failed:\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the sweep process (Linux: KiB)
    decoded = len(split) * 3 * args.sweep_resolution ** 2
    print(f"\nsweep of {args.sweep_models} models at {args.sweep_resolution} px streamed from the prepared copy: "
          f"{wall:.0f} s; peak resident memory {peak / 2 ** 30:.2f} GiB; the tree decoded at that size "
          f"{decoded / 2 ** 30:.2f} GiB ({decoded / peak:.1f}x the peak)", flush=True)

    import torch
    if torch.cuda.is_available():
        print("a GPU is present: benchmarks/bench_gpu.py times packed training (models per hour)")
    else:
        print("no GPU here: packed models per hour on imagenet64 are unmeasured")


if __name__ == "__main__":
    main()
