"""A fast training loop on tensors, in the spirit of KellerJordan/airbench.

Images stay in one normalised float tensor, padded once; augmentation (random crop,
horizontal flip) is a pure tensor function over whole batches; there is no DataLoader and
no per-image Python work. The learning rate follows a triangular schedule: linear up to
``lr`` at ``peak_epoch``, then linear down to zero at the end. The optimiser is
:class:`NesterovSGD`, torch's SGD update written out: ``torch.optim`` imports
``torch._dynamo`` on first use, about 2 s of a 2-core machine's start-up.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from transfer_core.train.models import training_memory_format

CROP_PADDING = 2  # pixels of reflect padding for random crops (at 16-32 px)
AUGMENT_BLOCK_ELEMENTS = 2**25  # augment about this many floats (128 MB) at once, in whole batches


def pick_device(name: str | None = None) -> torch.device:
    """The one place a device is chosen: ``name`` when given (``"cpu"``, ``"cuda:1"``), else CUDA if present,
    else CPU. It reads no environment variable (the library's rule: entry points read the environment)."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class DivergenceError(RuntimeError):
    """Training produced a NaN or infinite loss."""


@dataclass(frozen=True)
class Recipe:
    """What :func:`train` needs; built from a PretrainConfig or TransferConfig section."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    label_smoothing: float
    momentum: float = 0.9
    peak_epoch: float = 0.0  # 0 means "a fifth of the way in"

    @classmethod
    def from_section(cls, section) -> "Recipe":
        return cls(section.epochs, section.batch_size, section.lr, section.weight_decay,
                   section.label_smoothing, getattr(section, "momentum", 0.9),
                   getattr(section, "peak_epoch", 0.0))


def normalize(images: torch.Tensor, mean, std, device) -> torch.Tensor:
    """``(images - mean) / std`` ``(N, 3, R, R)`` in channels_last, in torch's default dtype: float32, unless a
    test sets float64 (``torch.set_default_dtype``), in which the whole training computes, so that packed and
    single-model runs can be compared to rounding."""
    x = images.to(device, non_blocking=True).to(torch.get_default_dtype())
    return ((x - mean.to(device).view(1, 3, 1, 1)) / std.to(device).view(1, 3, 1, 1)).contiguous(
        memory_format=torch.channels_last)


def batch_flip_lr(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def batch_crop(padded: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random ``size``-pixel crops ``(N, C, size, size)`` of an already padded batch."""
    n, span = len(padded), padded.shape[-1] - size + 1
    dy = torch.randint(0, span, (n,), generator=generator).to(padded.device)
    dx = torch.randint(0, span, (n,), generator=generator).to(padded.device)
    ar = torch.arange(size, device=padded.device)
    rows = (dy[:, None] + ar)[:, None, :, None]  # (N, 1, size, 1)
    cols = (dx[:, None] + ar)[:, None, None, :]  # (N, 1, 1, size)
    batch = torch.arange(n, device=padded.device)[:, None, None, None]
    chan = torch.arange(padded.shape[1], device=padded.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def augment_block(padded: torch.Tensor, size: int, generator: torch.Generator,
                  memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """Random crop, then random horizontal flip, of every image of a padded block ``(n, C, size+2p, size+2p)``.

    Returns ``(n, C, size, size)`` in ``memory_format``. Draws, in this order: ``n`` row
    offsets, ``n`` column offsets (:func:`batch_crop`), ``n`` flip coins (:func:`batch_flip_lr`).
    """
    return batch_flip_lr(batch_crop(padded, size, generator), generator).contiguous(memory_format=memory_format)


def augment_block_size(batch_size: int, image: torch.Tensor) -> int:
    """Images augmented at once: whole batches, about :data:`AUGMENT_BLOCK_ELEMENTS` floats."""
    return batch_size * max(1, AUGMENT_BLOCK_ELEMENTS // (batch_size * image.numel()))


def triangular_lr(step: int, total_steps: int, peak_step: float) -> float:
    """Multiplier in [0, 1]: rises linearly to 1 at ``peak_step``, falls to 0 at the end."""
    if step < peak_step:
        return (step + 1) / (peak_step + 1)
    return max(0.0, (total_steps - step) / max(1.0, total_steps - peak_step))


class NesterovSGD:
    """SGD with Nesterov momentum and L2 weight decay: the update of
    ``torch.optim.SGD(nesterov=True, dampening=0)``, step for step (tested against it)::

        g = grad + weight_decay * p;  buf = momentum * buf + g;  p -= lr * (g + momentum * buf)

    The learning rate is given to every :meth:`step`, so a schedule is a plain function.
    Parameters without a gradient in a step are left alone, momentum included.

    Why not torch's own: its first ``step`` imports ``torch._dynamo`` (2.0 s measured on the 2-core
    machine, 2026-12-07, in every worker process), and a pack zeroes one diverged member's momentum
    in place (``packed_training._quarantine``), which needs the buffers at hand.
    """

    def __init__(self, params, momentum: float = 0.9, weight_decay: float = 0.0):
        self.params = [p for p in params if p.requires_grad]
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buffers = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, lr: float) -> None:
        for p, buf in zip(self.params, self.buffers):
            if p.grad is None:
                continue
            g = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            buf.mul_(self.momentum).add_(g)
            p.add_(g.add(buf, alpha=self.momentum), alpha=-lr)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def make_optimizer(params, recipe: Recipe) -> NesterovSGD:
    return NesterovSGD(params, recipe.momentum, recipe.weight_decay)


@contextlib.contextmanager
def one_cpu_thread(device: torch.device):
    """Run the block with one intra-op thread on CPU: a linear head's steps are too small for
    threads, which only add synchronisation (measured 50x slower with 2 threads on a busy
    2-core machine)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def lr_schedule(recipe: Recipe, n: int) -> Callable[[int], float]:
    """The learning rate of each step when training on ``n`` examples: step ``s`` of ``total`` uses
    ``recipe.lr * triangular_lr(s, total, peak)``, peaking at ``recipe.peak_epoch`` (default a fifth)."""
    steps_per_epoch = max(1, math.ceil(n / recipe.batch_size))
    total = recipe.epochs * steps_per_epoch
    peak = (recipe.peak_epoch or recipe.epochs / 5) * steps_per_epoch
    return lambda step: recipe.lr * triangular_lr(step, total, peak)


def epoch_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                  augment: bool, memory_format: torch.memory_format = torch.channels_last,
                  rows: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled batches ``(inputs, labels)`` of a training set of ``n = len(labels)`` examples.

    Example ``i`` is ``images[rows[i]]`` (``images[i]`` when ``rows`` is None) with label
    ``labels[i]``; with ``augment``, ``images`` are padded by :data:`CROP_PADDING`. Draws from
    ``generator``, in this order: a permutation of the ``n`` examples, then, with ``augment``,
    for each block of :func:`augment_block_size` permuted examples, its crops and flips
    (:func:`augment_block`); batches are consecutive slices of the block. The one place a
    training set becomes batches: :func:`train` and packed training
    (:func:`~transfer_core.train.packed_training.train_packed`, one such stream per model) use it, so a
    model's batches do not depend on whether it trains alone or in a pack.
    """
    n = len(labels)
    order = torch.randperm(n, generator=generator).to(labels.device)
    block = augment_block_size(batch_size, images[0]) if augment else n
    size = images.shape[-1] - 2 * CROP_PADDING
    for start in range(0, n, block):
        idx_block = order[start:start + block]
        block_images = None
        if augment:
            block_images = augment_block(images[idx_block if rows is None else rows[idx_block]], size, generator,
                                         memory_format)
        for i in range(0, len(idx_block), batch_size):
            idx = idx_block[i:i + batch_size]
            if augment:
                yield block_images[i:i + batch_size], labels[idx]
            else:
                yield images[idx if rows is None else rows[idx]], labels[idx]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, generator: torch.Generator,
          augment: bool = True, on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``model`` in place on normalised images ``x (N, 3, R, R)`` and labels ``y (N,)``.

    Each epoch draws a permutation of the N images; with ``augment``, the permuted images are
    augmented a block at a time (:func:`augment_block_size` images, one block per epoch at
    the ``quick`` size) by :func:`augment_block`, and batches are consecutive slices of the
    block (:func:`epoch_batches`): a few large tensor operations per epoch instead of several
    small ones per step, which on a busy 2-core machine cost more than the step itself with 2
    threads. The learning rate follows :func:`lr_schedule`; the optimiser is :class:`NesterovSGD`.
    ``on_epoch(epoch, mean_loss)`` runs after each epoch (Optuna reports and prunes there).
    Returns the mean training loss of every epoch; raises DivergenceError on a NaN loss.
    """
    device, n = x.device, len(x)
    memory_format = torch.contiguous_format
    if x.dim() == 4:  # images: model and batches in one memory format
        memory_format = training_memory_format(model)
        model.to(memory_format=memory_format)
        x = x.contiguous(memory_format=memory_format)
    padded = F.pad(x, (CROP_PADDING,) * 4, mode="reflect") if augment else x
    lr_at = lr_schedule(recipe, n)
    optimizer = make_optimizer(model.parameters(), recipe)
    use_amp = device.type == "cuda"
    model.train()
    losses, step = [], 0
    for epoch in range(recipe.epochs):
        epoch_loss = torch.zeros((), device=device)
        for batch, targets in epoch_batches(padded, y, recipe.batch_size, generator, augment, memory_format):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = F.cross_entropy(model(batch), targets, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step(lr_at(step))
            epoch_loss += loss.detach() * len(targets)
            step += 1
        mean_loss = float(epoch_loss) / n
        if not math.isfinite(mean_loss):
            raise DivergenceError(f"loss became {mean_loss} in epoch {epoch + 1}; lower the learning rate")
        losses.append(mean_loss)
        if on_epoch is not None:
            on_epoch(epoch, mean_loss)
    return losses


@torch.no_grad()
def infer(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Apply ``fn`` to ``x`` in batches, in eval precision; returns float32 on x's device (float64 from a
    float64 model)."""
    out = []
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        for chunk in x.split(batch_size):
            y = fn(chunk)
            out.append(y if y.dtype == torch.float64 else y.float())
    return torch.cat(out)


def train_linear_head(features: torch.Tensor, y: torch.Tensor, n_classes: int, recipe: Recipe,
                      generator: torch.Generator,
                      on_epoch: Callable[[int, float], None] | None = None,
                      val_features: torch.Tensor | None = None,
                      on_val: Callable[[int, float, torch.Tensor], None] | None = None) -> nn.Linear:
    """Fit a linear classifier on cached features ``(N, D)``; returns it in raw-feature units.

    Features are standardised for conditioning while training, and the standardisation is
    folded into the returned layer, so ``head(features)`` needs no preprocessing. Trains on
    one CPU thread (:func:`one_cpu_thread`).
    With ``val_features (M, D)``, ``on_val(epoch, mean_loss, val_logits (M, n_classes))``
    runs after each epoch on the head as trained so far (Optuna reports and prunes there).
    """
    mean, std = feature_standardization(features)
    z = (features - mean) / std
    head = nn.Linear(features.shape[1], n_classes).to(features.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    z_val = None if val_features is None else (val_features - mean) / std

    def after_epoch(epoch: int, loss: float) -> None:
        if on_val is not None and z_val is not None:
            with torch.no_grad():
                on_val(epoch, loss, head(z_val))
        if on_epoch is not None:
            on_epoch(epoch, loss)

    with one_cpu_thread(features.device):
        train(head, z, y, recipe, generator, augment=False, on_epoch=after_epoch)
    folded = nn.Linear(features.shape[1], n_classes).to(features.device)
    with torch.no_grad():
        weight, bias = fold_standardization(head.weight, head.bias, mean, std)
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    return folded


def feature_standardization(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std ``(..., D)`` over the examples of features ``(..., N, D)`` (std at least 1e-6).

    Leading dimensions are models of a pack (:mod:`transfer_core.train.packed_training`), standardised apart.
    """
    return features.mean(-2), features.std(-2).clamp_min(1e-6)


def fold_standardization(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                         std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear layer on standardised features, as one on raw features: ``W z + b = W' x + b'``.

    Shapes: ``weight (..., C, D)``, ``bias (..., C)``, ``mean`` and ``std (..., D)``, with
    ``z = (x - mean) / std``; leading dimensions are models of a pack.
    """
    return weight / std.unsqueeze(-2), bias - (weight * (mean / std).unsqueeze(-2)).sum(-1)
