"""The source backbone a tuning study pretrains once, and the per-trial transfer on it.

Every trial of a study fits only the transfer step on the same backbone, with the same
seed, so trials differ only in their hyperparameters (common random numbers). Trials are
scored on the validation split's **ranking half** only
(:func:`~transfer_core.data.validation_halves`): the selection half, on which a pruned source
must later show its gain, is read by the champion gate alone, so the recipe chosen here has
never seen it.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from transfer_core.config import RunConfig
from transfer_core.data import run_seed, validation_halves
from transfer_core.execute import SubsetRunner
from transfer_core.track import artifact_path, load_checkpoint, log_metrics, run_filter, save_checkpoint
from transfer_core.track.runs import TUNE
from transfer_core.train import (Normalized, Recipe, accuracy, evaluate_split, frozen_features, infer, normalize,
                                 pretrain, seed_everything, source_subset, train_linear_head, transfer)
from transfer_core.tune.records import BACKBONE_ARTIFACT

BACKBONE_TAG = "backbone_hash"


@dataclass
class Backbone:
    net: torch.nn.Module  # pretrained on the kept source classes, with its source head
    norm: tuple  # (mean, std), each (3,), in [0, 255] units
    seed: int  # the pretraining seed; every trial's transfer reuses it (common random numbers)
    source_acc: float | None = None  # on held-out images of the kept classes


def pretrain_backbone(runner: SubsetRunner, index: int | None) -> Backbone:
    """Pretrain once on every source class (``index`` None) or on the classes of mask ``index``."""
    data, config = runner.data, runner.config
    mask = np.ones(data.source.n_classes, dtype=bool) if index is None else runner.mask_for(index)
    seed = run_seed(config.sweep_seed, 0 if index is None else index)
    source, kept = source_subset(data.source, mask)
    norm = data.source_norm
    net = pretrain(config, source, len(kept), seed_everything(seed), runner.device, norm)
    source_acc = None
    if runner.source_test is not None:
        held_out, _ = source_subset(runner.source_test, mask)
        source_acc = accuracy(evaluate_split(Normalized(net, *norm), held_out, runner.device), held_out.labels)
    return Backbone(net, norm, seed, source_acc)


def backbone_hash(config: RunConfig, index: int | None) -> str:
    """What fixes the backbone: every config field except the transfer section, and the classes."""
    transfer_fields = [k for k in config.to_params() if k.startswith("transfer.")]
    return f"{config.config_hash(*transfer_fields)}-{'all' if index is None else index}"


def reuse_backbone(client: MlflowClient, experiment_id: str, runner: SubsetRunner,
                   index: int | None) -> tuple[Backbone, str] | None:
    """A backbone an earlier tune run logged for the same config and classes, and that run's id.

    A resumed study thus keeps training on one backbone, and studies of other modes or search
    spaces over the same backbone skip its pretraining.
    """
    wanted = backbone_hash(runner.config, index)
    runs = client.search_runs([experiment_id], run_filter(TUNE, **{BACKBONE_TAG: wanted}),
                              order_by=["attributes.start_time ASC"])
    for run in runs:
        try:
            model = load_checkpoint(artifact_path(run, BACKBONE_ARTIFACT, client))
        except (OSError, MlflowException, RuntimeError, KeyError):
            continue  # that call died before logging its backbone
        seed = run_seed(runner.config.sweep_seed, 0 if index is None else index)
        norm = (model.mean.flatten(), model.std.flatten())
        return (Backbone(model.net.to(runner.device), norm, seed, run.data.metrics.get("backbone_source_acc")),
                run.info.run_id)
    return None


def ranking_half(runner: SubsetRunner):
    """The validation images a trial is scored on: the ranking half of the validation split ``(n, 3, R, R)``."""
    val = runner.data.target_val
    return val.select(validation_halves(val.labels.numpy(), runner.config.data.split_seed).nonzero()[0])


class TrialFitter:
    """Fits the transfer step of one trial on the shared backbone; returns its accuracy on the
    validation split's ranking half (never the selection half, never test).

    fixed: features ``(N, D)`` of the target train and ranking-half images are computed once, here;
           a trial trains a linear head on them (the same computation as ``transfer``).
    full:  a trial fine-tunes a deep copy of the backbone with ``transfer``.
    """

    def __init__(self, backbone: Backbone, runner: SubsetRunner):
        self.backbone, self.data, self.device = backbone, runner.data, runner.device
        self.val = ranking_half(runner)
        self.y_train = self.data.target_train.labels.to(self.device)
        self.y_val = self.val.labels.to(self.device)
        self.x_val = normalize(self.val.images, *backbone.norm, self.device)
        self.features = None
        if runner.config.transfer.mode == "fixed":
            frozen = copy.deepcopy(backbone.net)
            self.features = tuple(frozen_features(
                frozen, normalize(self.data.target_train.images, *backbone.norm, self.device), self.x_val))

    def fit(self, config: RunConfig, on_epoch: Callable[[int, float, float], None] | None = None) -> float:
        """Transfer with ``config.transfer``; ``on_epoch(epoch, loss, val_acc)`` after each epoch (``val_acc``:
        on the ranking half)."""
        generator = seed_everything(self.backbone.seed)
        report = on_epoch or (lambda epoch, loss, acc: None)
        if config.transfer.mode == "fixed":
            train_features, val_features = self.features
            head = train_linear_head(train_features, self.y_train, self.data.target_train.n_classes,
                                     Recipe.from_section(config.transfer), generator, val_features=val_features,
                                     on_val=lambda e, loss, logits: report(e, loss, accuracy(logits, self.y_val)))
            with torch.no_grad():
                return accuracy(head(val_features), self.y_val)
        net = copy.deepcopy(self.backbone.net)

        def after_epoch(epoch: int, loss: float) -> None:
            net.eval()  # evaluate with running BatchNorm statistics, then resume training
            acc = accuracy(infer(net, self.x_val), self.y_val)
            net.train()
            report(epoch, loss, acc)

        transfer(config, net, self.backbone.norm, self.data, generator, self.device,
                 on_epoch=after_epoch if on_epoch else None)
        return accuracy(infer(net.eval(), self.x_val), self.y_val)


def log_backbone(client: MlflowClient, run_id: str, backbone: Backbone, config: RunConfig) -> None:
    """``backbone.pt`` (loads with ``tracking.load_checkpoint``) and its source accuracy."""
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / BACKBONE_ARTIFACT, Normalized(backbone.net, *backbone.norm), config)
        client.log_artifact(run_id, str(Path(tmp) / BACKBONE_ARTIFACT))
    if backbone.source_acc is not None:
        log_metrics(client, run_id, {"backbone_source_acc": backbone.source_acc})
