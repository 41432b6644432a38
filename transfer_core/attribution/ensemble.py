"""The models an attribution ensembles: which source images each trains on, and training them.

A :class:`Member` is one pretrain-plus-transfer: its source network (the pretrained backbone with its
source head, before the transfer) and its target network (the transferred model), which share the
backbone's parameter names, plus the source examples it is attributed over. Kinds (:data:`KINDS`):

``subset``         the sweep's own model ``index``: pretrained on a random half of the source *classes*
                   (:func:`~transfer_core.data.class_mask`, seed :func:`~transfer_core.data.run_seed`),
                   so the same as the sweep trains. Its source head has no logit for a left-out class, so
                   a left-out class's images have no output to differentiate: it is attributed over the
                   images of its kept classes only, and a class's score averages the models that kept it.
``full``           pretrained on every source image; attributed over all of them.
``half_examples``  pretrained on a random half of *each class's* images (TRAK's ensembles); attributed over
                   every source image, trained on or not (TRAK featurizes the whole training set).

No tracking here: a step wraps these.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from transfer_core.config import ConfigError, RunConfig
from transfer_core.data import ImageSet, TransferData, check_mask, class_mask, class_rows, run_seed
from transfer_core.train import SubsetRunResult, run_subset

KINDS = ("subset", "full", "half_examples")


@dataclass
class Member:
    """One model of the ensemble, ready to attribute.

    ``source_network``: normalised images ``(N, 3, R, R)`` -> logits ``(N, k)`` over its head's source classes;
    ``target_network``: -> ``(N, n_target)``; both in eval mode, with their heads named ``head``.
    ``rows (n_m,)``: indices into the source set it is attributed over; ``labels (n_m,)``: their labels
    in the source head's order. ``norm``: the input (mean, std) ``(3,)`` in [0, 255] units.
    """

    source_network: nn.Module
    target_network: nn.Module
    rows: torch.Tensor
    labels: torch.Tensor
    norm: tuple[torch.Tensor, torch.Tensor]
    info: dict = field(default_factory=dict)  # kind, index, seed, cpu seconds of training, accuracies


def member_sources(kind: str, index: int, source_labels: torch.Tensor, n_classes: int, sweep_seed: int = 0,
                   alpha: float = 0.5) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """What member ``index`` of ``kind`` trains on: ``(class_mask (n_classes,), train_rows, attributed_rows)``.

    Rows index the source set (labels ``(n_source,)``); a pure function of the arguments.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown ensemble kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "subset":
        mask = class_mask(sweep_seed, index, n_classes, alpha)
        rows = class_rows(source_labels, mask)[0]
        return mask, rows, rows
    everything = torch.arange(len(source_labels))
    mask = np.ones(n_classes, dtype=bool)
    if kind == "full":
        return mask, everything, everything
    rng = np.random.default_rng([int(sweep_seed), int(index), 11])
    labels = source_labels.numpy()
    halves = [rng.permutation(np.flatnonzero(labels == c))[: (int((labels == c).sum()) + 1) // 2]
              for c in range(n_classes)]
    return mask, torch.from_numpy(np.sort(np.concatenate(halves))), everything


def train_member(config: RunConfig, data: TransferData, kind: str, index: int, device=None) -> Member:
    """Train member ``index`` of ``kind`` with ``config``'s recipe (pretrain, transfer) through
    :func:`~transfer_core.train.run_subset`; ``info["train_cpu_s"]`` is the process CPU time it took
    (every thread). The seed is the sweep's for that index (``config.sweep_seed``)."""
    if not isinstance(data.source, ImageSet):
        raise ConfigError("attribution needs the source in memory (data.source_store=memory)")
    mask, train_rows, rows = member_sources(kind, index, data.source.labels, data.source.n_classes,
                                            config.sweep_seed, config.alpha)
    seed = run_seed(config.sweep_seed, index)
    trained_on = data
    if len(train_rows) != len(data.source):  # a half of each class's images: the same normalisation as the whole
        trained_on = TransferData(data.source.select(train_rows), data.target_train, data.target_val,
                                  data.target_test, data.source_norm)
    start = time.process_time()
    result = run_subset(config, trained_on, mask, seed, device=device, keep_source_model=True)
    train_cpu_s = time.process_time() - start
    member = member_from_result(result, data, rows)
    member.info.update(kind=kind, index=int(index), seed=int(seed), train_cpu_s=train_cpu_s,
                       n_trained=int(len(train_rows)), target_val_acc=result.metrics["target_val_acc"],
                       target_test_acc=result.metrics["target_test_acc"])
    return member


def member_from_result(result: SubsetRunResult, data: TransferData, rows: torch.Tensor | None = None) -> Member:
    """A member from a subset run made with ``keep_source_model=True``, attributed over ``rows`` of
    ``data.source`` (default: every image of its kept classes)."""
    if result.source_model is None:
        raise ConfigError("the subset run kept no source model; run it with keep_source_model=True")
    mask = check_mask(result.class_mask, data.source.n_classes)
    kept_rows, _, kept = class_rows(data.source.labels, mask)
    rows = kept_rows if rows is None else torch.as_tensor(rows, dtype=torch.long)
    relabel = torch.full((len(mask),), -1, dtype=torch.long)
    relabel[kept] = torch.arange(len(kept))
    labels = relabel[data.source.labels[rows]]
    if (labels < 0).any():
        raise ConfigError("some attributed source images belong to classes the model's source head does not have")
    return Member(result.source_model.net.eval(), result.model.net.eval(), rows, labels, data.source_norm,
                  {"n_kept_classes": int(mask.sum())})
