"""How many models of a pack fit in a device's memory: an estimate from shapes, made before anything is allocated.

One model of a pack needs, at its peak, its weights with their gradients and momentum, the
activations autograd saves in one training step (counted by running the network once on the
``meta`` device, where tensors have shapes but no storage), its augmented block of images
(:func:`~transfer_core.train.loop.epoch_batches`) and batches, and in fixed-feature transfer
its cached target features. The data sit on the device once per process
(:class:`~transfer_core.train.packed_training.DeviceData`), whatever the pack size; so do the
temporaries of augmenting one model's block, which models of a pack do one after another.
Activations are counted at 4 bytes a value; under bf16 autocast on a GPU many are 2, so the
estimate errs on the safe side (``benchmarks/bench_gpu.py`` prints it beside the measured peak).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from transfer_core.config import ConfigError, RunConfig
from transfer_core.data import ImageSet, TransferData, n_kept
from transfer_core.train.loop import CROP_PADDING, augment_block_size
from transfer_core.train.models import build_model

USABLE_FRACTION = 0.85  # of the free memory; the allocator's cache, cuDNN workspaces and fragmentation take the rest
ACTIVATION_HEADROOM = 1.25  # a step's peak over its saved activations: gradients of activations, temporaries
AUTO_MAX = 256  # --pack auto never packs more: the GPU is long saturated, and a killed pack loses all its runs
GIB = 2 ** 30


@dataclass(frozen=True)
class PackBudget:
    """Memory of packs on one device, in bytes: ``shared + n * per_model`` must fit in ``available``."""

    device: str
    per_model: int
    shared: int  # the data on the device, once per process
    available: int  # free on the device now, for this worker
    workers: int = 1  # processes sharing the device; ``available`` is already divided between them

    def largest(self) -> int:
        """The largest pack that fits (0 if not even one model does)."""
        return max(0, int((self.available * USABLE_FRACTION - self.shared) // self.per_model))

    def auto(self) -> int:
        return max(1, min(AUTO_MAX, self.largest()))

    def check(self, n: int) -> None:
        """Refuse a pack of ``n`` models that does not fit, naming the largest that does."""
        largest = self.largest()
        if n <= largest:
            return
        need = (self.shared + n * self.per_model) / USABLE_FRACTION
        worker = f" for each of {self.workers} workers" if self.workers > 1 else ""
        fix = (f"use --pack {largest} or less, or --pack auto" if largest >= 1 else
               "lower pretrain.batch_size or the resolution, or free memory on the device")
        raise ConfigError(f"a pack of {n} models needs about {need / GIB:.1f} GiB of {self.device} memory "
                          f"({self.per_model / GIB * 1024:.0f} MiB per model plus {self.shared / GIB:.2f} GiB of "
                          f"data) but {self.available / GIB:.1f} GiB is free{worker}; {fix}")


def step_bytes(arch: str, width: int, n_classes: int, batch: int, resolution: int) -> tuple[int, int, int]:
    """``(parameter bytes, saved activation bytes, feature dim)`` of one training step of one network.

    The network runs once on the ``meta`` device; every tensor autograd saves for the
    backward pass is counted once.
    """
    with torch.device("meta"):
        net = build_model(arch, n_classes, width).to(memory_format=torch.channels_last)
        x = torch.empty(batch, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
    saved: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (tensor, bytes); the tensor is kept so ids stay unique

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved[id(t)] = (t, t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        net.train()(x)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    return params, sum(size for _, size in saved.values()), net.feature_dim


def _block_images(batch: int, resolution: int, padding: int, n: int) -> int:
    """Images a model augments at once (:func:`~transfer_core.train.loop.augment_block_size`), of ``n`` at most."""
    return min(n, augment_block_size(batch, torch.empty(3, resolution + 2 * padding, resolution + 2 * padding,
                                                        device="meta")))


def _training_bytes(params: int, saved: int, batch: int, resolution: int, padding: int, n: int) -> int:
    """Weights + gradients + momentum, activations with headroom, the augmented block a model's
    batches are sliced from (held until its next block), and a batch's copies (slice, pack, format)."""
    block = _block_images(batch, resolution, padding, n) * 3 * resolution ** 2 * 4
    return 3 * params + int(ACTIVATION_HEADROOM * saved) + block + 4 * batch * 3 * (resolution + 2 * padding) ** 2 * 4


def _augmenting_bytes(batch: int, resolution: int, padding: int, n: int) -> int:
    """The temporaries of augmenting one block (gather, crop, flip), for one model at a time."""
    return 3 * _block_images(batch, resolution, padding, n) * 3 * (resolution + 2 * padding) ** 2 * 4


def pack_budget(config: RunConfig, data: TransferData, device, workers: int = 1,
                n_source_test: int = 0) -> PackBudget:
    """The memory budget of packs of ``config`` on ``device``, shared by ``workers`` processes.

    A streamed source (:class:`~transfer_core.data.stream.StreamedSource`) is not on the device:
    only each model's batch is, and its held-out images come a chunk at a time.
    """
    p, t, r = config.pretrain, config.transfer, config.data.resolution
    n_train, n_eval = len(data.target_train), len(data.target_val) + len(data.target_test)
    streamed = not isinstance(data.source, ImageSet)
    n_source = p.batch_size if streamed else len(data.source)  # source images on the device at once
    n_source_test = min(n_source_test, 1024) if streamed else n_source_test
    params, saved, dim = step_bytes(p.arch, p.width, n_kept(data.source.n_classes, config.alpha), p.batch_size, r)
    per_model = _training_bytes(params, saved, p.batch_size, r, CROP_PADDING, n_source)
    if t.mode == "full":
        params, saved, _ = step_bytes(p.arch, p.width, data.target_train.n_classes, t.batch_size, r)
        per_model = max(per_model, _training_bytes(params, saved, t.batch_size, r, CROP_PADDING, n_train))
    else:  # cached features of every target split, and the standardised train features
        per_model = max(per_model, params + (2 * n_train + n_eval) * dim * 4)
    image, padded = 3 * r * r * 4, 3 * (r + 2 * CROP_PADDING) ** 2 * 4
    shared = n_source * (image + padded) + (n_train + n_eval + n_source_test) * image
    augmenting = _augmenting_bytes(p.batch_size, r, CROP_PADDING, n_source)
    if t.mode == "full":
        shared += n_train * padded
        augmenting = max(augmenting, _augmenting_bytes(t.batch_size, r, CROP_PADDING, n_train))
    shared += augmenting
    device = torch.device(device)
    return PackBudget(str(device), per_model, shared, available_bytes(device) // workers, workers)


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device`` now: the GPU's free memory, else the machine's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
