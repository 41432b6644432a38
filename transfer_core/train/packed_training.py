"""Packed training: N subset runs at once in one network (:mod:`~transfer_core.train.packed_layers`), for GPUs.

    results = run_pack(config, data, masks, seeds)    # list of SubsetRunResult (or the error of that model)

Each model of a pack is the run :func:`~transfer_core.train.subset.run_subset` would train
alone with the same mask and seed: the same architecture, recipe, schedule and augmentation
(the functions of :mod:`~transfer_core.train.loop`), its own batches drawn from its own kept
classes by its own generator in the same order, the same initial weights. Only the
arithmetic is grouped, so results agree up to floating-point reordering
(``tests/train/test_packed.py`` checks weights and per-example outputs against ``train`` and
``run_subset``). Models with other numbers of source images or classes train in separate
packs, one after the other, because their step counts and heads differ.

A streamed source (:class:`~transfer_core.data.stream.StreamedSource`: an image folder too large
for memory) never sits on the device: a pack reads one :class:`~transfer_core.data.stream.SharedStream`
(each image decoded once, handed to every member that keeps its class), and each member's uint8
batches are normalised, padded, cropped and flipped on the device with its own generator. A model
trained alone on a streamed source is a pack of one, so it reads what it would read in a pack.

The data sit on the device once per process (:class:`DeviceData`: uint8 moved, then
normalised and padded there); augmentation runs on the device. In fixed-feature transfer
all N backbones see the same target images, so their features come from one pass, and the
N linear heads train together as one :class:`~transfer_core.train.packed_layers.PackedLinear`.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transfer_core.config import RunConfig
from transfer_core.data import ImageSet, TransferData, check_mask, class_rows
from transfer_core.data.stream import SharedStream, StreamedSource
from transfer_core.train.loop import (CROP_PADDING, DivergenceError, NesterovSGD, Recipe, augment_block, epoch_batches,
                                      feature_standardization, fold_standardization, infer, lr_schedule,
                                      make_optimizer, normalize, one_cpu_thread, pick_device, seed_everything)
from transfer_core.train.models import Normalized, build_model, training_memory_format
from transfer_core.train.outputs import per_example_outputs
from transfer_core.train.packed_layers import PackedLinear, PackedNetwork
from transfer_core.train.outputs import SubsetRunResult


class DeviceData:
    """A :class:`TransferData` on the device, normalised with ``data.source_norm`` once per process.

    ``source`` ``(M, 3, R+2p, R+2p)`` is padded for random crops; the target splits are
    ``(n, 3, R, R)``; ``target_train_padded`` is made on first use (full fine-tuning).
    """

    def __init__(self, data: TransferData, device, source_test: ImageSet | None = None):
        self.device, self.norm = torch.device(device), data.source_norm
        streamed = isinstance(data.source, StreamedSource)  # read from disk batch by batch, never put here whole
        self.source = None if streamed else _pad(self._put(data.source.images))
        self.source_labels = data.source.labels.to(self.device)
        self.target_train = self._put(data.target_train.images)
        self.target_train_labels = data.target_train.labels.to(self.device)
        self.target_val = self._put(data.target_val.images)
        self.target_test = self._put(data.target_test.images)
        self.source_test = None if source_test is None or isinstance(source_test, StreamedSource) else \
            self._put(source_test.images)
        self._target_train_padded = None

    def _put(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, *self.norm, self.device)  # uint8 moves, float is made on the device

    @property
    def target_train_padded(self) -> torch.Tensor:
        if self._target_train_padded is None:
            self._target_train_padded = _pad(self.target_train)
        return self._target_train_padded


def _pad(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (CROP_PADDING,) * 4, mode="reflect")


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@dataclass
class Member:
    """One model's training set within a pack: batches are ``source[rows[i]]`` for its own shuffles."""

    source: torch.Tensor  # (M, ...) images or features, on the device (may be shared by every member)
    rows: torch.Tensor | None  # (n,) this model's rows of ``source``; None: all of them
    labels: torch.Tensor  # (n,) int64, on the device
    generator: torch.Generator  # the model's own stream: shuffles, crops, flips


def _forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(x)


@functools.cache
def compiled_forward():
    """``torch.compile`` of ``net(x)``, made once per process: later packs of the same shapes reuse its graphs."""
    return torch.compile(_forward)


def train_packed(net: nn.Module, members: list[Member], recipe: Recipe, augment: bool = True,
                 failures: list[str | None] | None = None, compile: bool = False,
                 streamed: tuple[SharedStream, tuple] | None = None) -> list[str | None]:
    """Train the N models of ``net`` in place, as :func:`~transfer_core.train.loop.train` trains each alone.

    ``net`` maps a batch ``(B, N*C, ...)`` (model ``j``'s inputs in channel slice ``j``) to
    logits ``(B, N*K)``. Every member has the same number of examples, so the models step
    together through one learning-rate schedule (:func:`~transfer_core.train.loop.lr_schedule`),
    each on the batches :func:`~transfer_core.train.loop.epoch_batches` draws from its own
    generator (its own shuffles and augmented blocks: a pack holds N blocks at once), with
    the same optimiser (:class:`~transfer_core.train.loop.NesterovSGD`) and memory format
    (:func:`~transfer_core.train.models.training_memory_format`). Returns, per model, None or
    why it failed: a model whose loss becomes NaN or infinite stops counting and its weights
    are zeroed (its run fails; the others go on). ``failures`` are models that failed earlier:
    they do not train. ``compile`` runs the forward pass through :func:`compiled_forward`.
    ``streamed`` ``(stream, norm)``: the members' batches come from a shared stream of uint8 images
    instead (:func:`streamed_batches`); ``members`` then hold only the generators.
    """
    n_models = len(members)
    n = streamed[0].n_images if streamed else len(members[0].labels)
    failures = list(failures or [None] * n_models)
    device = members[0].labels.device
    memory_format = torch.contiguous_format
    if streamed or members[0].source.dim() == 4:  # images: the pack and its batches in one memory format
        memory_format = training_memory_format(net)
        net.to(memory_format=memory_format)
    lr_at = lr_schedule(recipe, n)
    optimizer = make_optimizer(net.parameters(), recipe)
    use_amp = device.type == "cuda"
    for j in (j for j, f in enumerate(failures) if f):
        _quarantine(net, optimizer, j)
    alive = torch.tensor([f is None for f in failures], device=device)
    forward = functools.partial(compiled_forward(), net) if compile else net
    net.train()
    step = 0
    for epoch in range(recipe.epochs):
        if streamed:
            steps = streamed_batches(streamed[0], epoch, members, streamed[1], device, memory_format)
        else:
            steps = zip(*[epoch_batches(m.source, m.labels, recipe.batch_size, m.generator, augment, memory_format,
                                        m.rows) for m in members])
        epoch_loss = torch.zeros(n_models, device=device)
        for batches in steps:
            x = torch.cat([b for b, _ in batches], 1)  # (B, N*C, ...)
            if x.dim() == 4:
                x = x.contiguous(memory_format=memory_format)
            y = torch.stack([t for _, t in batches], 1)  # (B, N)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = forward(x).view(len(y), n_models, -1).transpose(1, 2)  # (B, K, N)
                losses = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing,
                                         reduction="none").mean(0)  # (N,): each model's batch mean
            optimizer.zero_grad()
            torch.where(alive, losses, 0.0).sum().backward()
            optimizer.step(lr_at(step))
            epoch_loss += losses.detach().float() * len(y)
            step += 1
        for j, mean_loss in enumerate((epoch_loss / n).tolist()):
            if failures[j] is None and not math.isfinite(mean_loss):
                failures[j] = f"loss became {mean_loss} in epoch {epoch + 1}; lower the learning rate"
                _quarantine(net, optimizer, j)
                alive[j] = False
    net.zero_grad(set_to_none=True)  # the gradients are not needed after training: free their memory
    return failures


def streamed_batches(stream: SharedStream, epoch: int, members: list[Member], norm, device,
                     memory_format) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """One epoch of a shared stream as training batches: each member's uint8 batch moved to the device,
    normalised, padded, and cropped and flipped there by the member's own generator (:func:`augment_block`)."""
    for step in stream.epoch(epoch):
        batches = []
        for (images, labels), member in zip(step, members):
            x = _pad(normalize(images, *norm, device))
            batches.append((augment_block(x, x.shape[-1] - 2 * CROP_PADDING, member.generator, memory_format),
                            labels.to(device)))
        yield batches


@torch.no_grad()
def _quarantine(net: nn.Module, optimizer: NesterovSGD, j: int) -> None:
    """Zero model ``j``'s weights, statistics and momentum, so no NaN of it can reach the others."""
    parts = net.member_tensors(j) if isinstance(net, PackedNetwork) else [
        (t, j) for t in net.parameters()]  # a PackedLinear: model j is row j of each tensor
    momentum = {id(p): buf for p, buf in zip(optimizer.params, optimizer.buffers)}
    for tensor, part in parts:
        tensor[part] = 0
        buffer = momentum.get(id(tensor))
        if buffer is not None:
            buffer[part] = 0


def packed_infer(net: nn.Module, n_models: int, x: torch.Tensor, batch_size: int, features: bool = False):
    """Every model of ``net`` on the same inputs ``x (n, C, ...)``: ``(N, n, K)`` logits or ``(N, n, D)`` features."""
    fn = net.features if features else net
    out = infer(lambda chunk: fn(_channels_last(chunk.repeat(1, n_models, *([1] * (chunk.dim() - 2))))), x,
                batch_size)
    return out.view(len(x), n_models, -1).transpose(0, 1)


@dataclass
class _Model:
    """What one model of a group needs: its mask, seed, rows, generator and (full mode) head init."""

    mask: np.ndarray
    rows: torch.Tensor
    labels: torch.Tensor
    generator: torch.Generator
    net: nn.Module
    head: nn.Linear | None


def run_pack(config: RunConfig, data: TransferData, class_masks: list[np.ndarray], seeds: list[int],
             source_test: ImageSet | None = None, device=None, device_data: DeviceData | None = None,
             compile: bool = False) -> list[SubsetRunResult | Exception]:
    """:func:`~transfer_core.train.subset.run_subset` for N (mask, seed) pairs, trained as packs.

    Returns one entry per model, in order: its :class:`SubsetRunResult` (timings are the
    pack's phase times divided by its size: seconds per model), or the error that failed it
    (a :class:`DivergenceError`); an error of the whole pack (out of memory) propagates.
    ``compile``: ``torch.compile`` the packed network's training steps (GPUs; once per process).
    """
    device = torch.device(device or pick_device())
    masks = [check_mask(m, data.source.n_classes) for m in class_masks]
    on_device = device_data or DeviceData(data, device, source_test)
    groups: dict[tuple[int, int], list[int]] = {}
    for j, mask in enumerate(masks):  # equal step counts and head sizes pack together
        groups.setdefault((len(class_rows(data.source.labels, mask)[0]), int(mask.sum())), []).append(j)
    results: list = [None] * len(masks)
    for members in groups.values():
        out = _run_group(config, data, on_device, [masks[j] for j in members], [seeds[j] for j in members],
                         source_test, compile)
        for j, result in zip(members, out):
            results[j] = result
    return results


def _run_group(config, data: TransferData, dd: DeviceData, masks, seeds, source_test, compile: bool) -> list:
    p, t = config.pretrain, config.transfer
    device, n_target = dd.device, data.target_train.n_classes
    start = time.perf_counter()
    models = []
    for mask, seed in zip(masks, seeds):  # the global RNG as run_subset draws it: the network, then (full) the head
        generator = seed_everything(seed)
        rows, labels, kept = class_rows(data.source.labels, mask)
        net = build_model(p.arch, len(kept), p.width)
        head = nn.Linear(net.feature_dim, n_target) if t.mode == "full" else None
        models.append(_Model(mask, rows.to(device), labels.to(device), generator, net, head))
    n = len(models)
    packed = PackedNetwork([m.net for m in models]).to(device)  # train_packed picks the memory format
    for m in models:
        m.net = None  # the pack holds the weights now
    if isinstance(data.source, StreamedSource):  # one pass over the disk copy for the whole pack
        stream = SharedStream(data.source, [m.mask for m in models], p.batch_size)
        failures = train_packed(packed, [Member(None, None, m.labels, m.generator) for m in models],
                                Recipe.from_section(p), compile=compile, streamed=(stream, dd.norm))
    else:
        failures = train_packed(packed, [Member(dd.source, m.rows, m.labels, m.generator) for m in models],
                                Recipe.from_section(p), compile=compile)
    timings = {"pretrain_s": time.perf_counter() - start}
    metrics = [{} for _ in models]
    if isinstance(source_test, StreamedSource):
        packed.eval()
        accuracies = _streamed_source_accuracy(packed, [m.mask for m in models], source_test, dd, p.batch_size)
        for metric, acc in zip(metrics, accuracies):
            metric["source_acc"] = acc
    elif source_test is not None and dd.source_test is not None:
        packed.eval()
        logits = packed_infer(packed, n, dd.source_test, p.batch_size)  # (N, n_test, k)
        for m, logit, metric in zip(models, logits, metrics):
            rows, held_out, _ = class_rows(source_test.labels, m.mask)
            metric["source_acc"] = float((logit[rows.to(device)].argmax(1).cpu() == held_out).float().mean())

    start = time.perf_counter()
    recipe = Recipe.from_section(t)
    y = dd.target_train_labels
    if t.mode == "fixed":  # frozen backbones in eval mode: one pass over each split for all N
        packed.eval()
        for param in packed.parameters():
            param.requires_grad_(False)
        feats = {name: packed_infer(packed, n, x, p.batch_size, features=True)
                 for name, x in (("train", dd.target_train), ("val", dd.target_val), ("test", dd.target_test))}
        mean, std = feature_standardization(feats["train"])  # (N, D) each
        z = (feats["train"] - mean.unsqueeze(1)) / std.unsqueeze(1)  # (N, n_train, D)
        head = PackedLinear(torch.zeros(n, n_target, packed.feature_dim, device=device),
                            torch.zeros(n, n_target, device=device))
        with one_cpu_thread(device):  # as train_linear_head trains a head alone
            failures = train_packed(head, [Member(z[j], None, y, m.generator) for j, m in enumerate(models)],
                                    recipe, augment=False, failures=failures)
        with torch.no_grad():
            head = PackedLinear(*fold_standardization(head.weight, head.bias, mean, std))
        packed.set_head(head)
        logits = {name: _head_logits(head, feats[name]) for name in ("val", "test")}
    else:
        packed.set_head(PackedLinear.pack([m.head for m in models]).to(device))
        failures = train_packed(packed, [Member(dd.target_train_padded, None, y, m.generator) for m in models],
                                recipe, failures=failures, compile=compile)
        packed.eval()
        logits = {"val": packed_infer(packed, n, dd.target_val, recipe.batch_size),
                  "test": packed_infer(packed, n, dd.target_test, recipe.batch_size)}
    timings["transfer_s"] = time.perf_counter() - start

    start = time.perf_counter()
    results = []
    for j, m in enumerate(models):
        if failures[j]:
            results.append(DivergenceError(failures[j]))
            continue
        val = per_example_outputs(logits["val"][j], data.target_val.labels)
        test = per_example_outputs(logits["test"][j], data.target_test.labels)
        metrics[j].update(target_val_acc=float(val["correct"].mean()), target_test_acc=float(test["correct"].mean()))
        model = Normalized(packed.member(j), *dd.norm).eval().cpu()
        results.append(SubsetRunResult(m.mask, model, test, val, metrics[j]))
    timings["evaluate_s"] = time.perf_counter() - start
    for result in results:
        if isinstance(result, SubsetRunResult):
            result.timings = {k: v / n for k, v in timings.items()}
    return results


@torch.no_grad()
def _streamed_source_accuracy(net: nn.Module, masks: list[np.ndarray], held_out: StreamedSource, dd: DeviceData,
                              batch_size: int, chunk: int = 256) -> list[float]:
    """Each model's accuracy on the held-out images of its kept classes, decoded from disk a chunk at a time."""
    labels = held_out.labels.numpy()
    keeps = np.stack([np.asarray(m, bool)[labels] for m in masks])  # (N, n)
    relabel = np.cumsum(np.stack(masks), axis=1) - 1
    positions = np.flatnonzero(keeps.any(axis=0))
    right, total = np.zeros(len(masks)), keeps.sum(axis=1)
    for start in range(0, len(positions), chunk):
        part = positions[start:start + chunk]
        logits = packed_infer(net, len(masks), normalize(held_out.decode(part), *dd.norm, dd.device), batch_size)
        for j in range(len(masks)):
            mine = keeps[j, part]
            pred = logits[j][torch.from_numpy(mine).to(logits.device)].argmax(1).cpu().numpy()
            right[j] += (pred == relabel[j][labels[part[mine]]]).sum()
    return [float(r / t) if t else float("nan") for r, t in zip(right, total)]


@torch.no_grad()
def _head_logits(head: PackedLinear, features: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, n, K)`` of N heads on their own features ``(N, n, D)``."""
    n_models, n = features.shape[:2]
    flat = features.transpose(0, 1).reshape(n, -1)
    return infer(head, flat).view(n, n_models, -1).transpose(0, 1)
