"""One subset run, as pure computation: pretrain on kept source classes, transfer, score.

No tracking here; :class:`transfer_core.execute.SubsetRunner` wraps :func:`run_subset` in an MLflow run.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from transfer_core.config import ConfigError, RunConfig
from transfer_core.data import ImageSet, TransferData
from transfer_core.data import check_mask, class_rows
from transfer_core.train.loop import Recipe, infer, normalize, pick_device, seed_everything, train, \
    train_linear_head
from transfer_core.train.models import Normalized, build_model, fused_for_inference
from transfer_core.train.outputs import SubsetRunResult, accuracy, per_example_outputs


def source_subset(source: ImageSet, class_mask: np.ndarray) -> tuple[ImageSet, torch.Tensor]:
    """Images of the kept classes, relabelled 0..k-1; also returns kept class ids ``(k,)``."""
    index, labels, kept = class_rows(source.labels, class_mask)
    if len(index) == 0:
        raise ConfigError("the class subset has no source images; check data.source and the mask")
    subset = source.select(index)
    subset.labels = labels
    return subset, kept


def pretrain(config: RunConfig, source: ImageSet, n_classes: int, generator: torch.Generator, device,
             norm: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """Train a fresh network from scratch on ``source`` (labels 0..n_classes-1).

    ``norm`` is the (mean, std) ``(3,)`` inputs are normalised with: the whole source's
    (:attr:`TransferData.source_norm`), the same whatever classes are kept.
    """
    p = config.pretrain
    model = build_model(p.arch, n_classes, p.width).to(device)
    x = normalize(source.images, *norm, device)
    train(model, x, source.labels.to(device), Recipe.from_section(p), generator)
    return model


def frozen_extractor(backbone: nn.Module) -> nn.Module:
    """Freeze ``backbone`` in place (eval mode, so BatchNorm statistics do not move; no gradients)
    and return a module mapping normalised images ``(N, 3, R, R)`` to its features ``(N, D)``:
    a copy with BatchNorm folded into the convolutions (:func:`fused_for_inference`)."""
    backbone.eval()
    for param in backbone.parameters():
        param.requires_grad_(False)
    return fused_for_inference(backbone, "features")


def frozen_features(backbone: nn.Module, *images: torch.Tensor) -> list[torch.Tensor]:
    """Features ``(N_i, D)`` of each batch of normalised images ``(N_i, 3, R, R)`` under the frozen backbone.

    Fixed-feature transfer computes these once and trains only a head on them; see :func:`frozen_extractor`.
    """
    extract = frozen_extractor(backbone)
    return [infer(extract, x) for x in images]


def transfer(config: RunConfig, backbone: nn.Module, norm: tuple, data: TransferData,
             generator: torch.Generator, device, on_epoch=None) -> nn.Module:
    """Fit ``backbone`` to the target train split; returns the full target network.

    fixed: the backbone is frozen in eval mode (BatchNorm statistics do not move); its
           features are computed once and a linear head is trained on them.
    full:  a new head is attached and every weight trains, with augmentation.
    """
    return transfer_and_score(config, backbone, norm, data, generator, device, on_epoch)[0]


def transfer_and_score(config: RunConfig, backbone: nn.Module, norm: tuple, data: TransferData,
                       generator: torch.Generator, device, on_epoch=None,
                       score: tuple[ImageSet, ...] = ()) -> tuple[nn.Module, list[torch.Tensor]]:
    """:func:`transfer`, then the logits ``(N_i, n_target)`` of every image set in ``score``.

    In fixed mode the scored sets go through the frozen backbone in the same pass as the
    training images, and the trained head is applied to those features: the backbone runs
    once per image. In full mode the fine-tuned network scores them afterwards.
    """
    t = config.transfer
    n_target = data.target_train.n_classes
    recipe = Recipe.from_section(t)
    y = data.target_train.labels.to(device)
    if t.mode == "fixed":
        extract = frozen_extractor(backbone)  # one split normalised at a time: peak memory stays one split's
        train_features, *scored = (infer(extract, normalize(s.images, *norm, device))
                                   for s in (data.target_train, *score))
        backbone.head = train_linear_head(train_features, y, n_target, recipe, generator, on_epoch=on_epoch)
        with torch.no_grad():
            return backbone.eval(), [backbone.head(f) for f in scored]
    backbone.head = nn.Linear(backbone.feature_dim, n_target).to(device)
    train(backbone, normalize(data.target_train.images, *norm, device), y, recipe, generator, on_epoch=on_epoch)
    backbone.eval()
    model = Normalized(backbone, *norm).to(device)
    return backbone, [evaluate_split(model, s, device) for s in score]


def evaluate_split(model: Normalized, images: ImageSet, device) -> torch.Tensor:
    """Logits ``(N, C)`` of ``model`` (which normalises internally) on uint8 images; leaves ``model`` in eval mode."""
    return infer(fused_for_inference(model), images.images.to(device))


def run_subset(config: RunConfig, data: TransferData, class_mask: np.ndarray, seed: int,
               source_test: ImageSet | None = None, device=None, on_epoch=None,
               keep_source_model: bool = False) -> SubsetRunResult:
    """Pretrain on the kept classes of ``data.source``, transfer to the target, score.

    With ``keep_source_model``, the result also holds the pretrained network with its source head, as it
    was before the transfer (``source_model``; gradient attribution needs both ends of the transfer).

    Metrics: ``source_acc`` (held-out source images of the kept classes, if ``source_test``
    is given), ``target_val_acc``, ``target_test_acc``; per-example outputs on the target
    validation and test splits. Timings: seconds per phase; in fixed mode the backbone's pass
    over the validation and test images counts to ``transfer_s`` (see :func:`transfer_and_score`).
    """
    device = device or pick_device()
    class_mask = check_mask(class_mask, data.source.n_classes)
    if not isinstance(data.source, ImageSet):  # a streamed source: a pack of one reads it from disk
        from transfer_core.train.packed_training import run_pack
        (result,) = run_pack(config, data, [class_mask], [seed], source_test, device)
        if isinstance(result, Exception):
            raise result
        return result
    generator = seed_everything(seed)
    timings, metrics = {}, {}

    start = time.perf_counter()
    source, kept = source_subset(data.source, class_mask)
    norm = data.source_norm
    net = pretrain(config, source, len(kept), generator, device, norm)
    timings["pretrain_s"] = time.perf_counter() - start
    source_model = Normalized(copy.deepcopy(net), *norm).eval().cpu() if keep_source_model else None
    if source_test is not None:
        held_out, _ = source_subset(source_test, class_mask)
        source_model = Normalized(net, *norm).to(device)
        metrics["source_acc"] = accuracy(evaluate_split(source_model, held_out, device), held_out.labels)

    start = time.perf_counter()
    net, (val_logits, test_logits) = transfer_and_score(config, net, norm, data, generator, device, on_epoch,
                                                        score=(data.target_val, data.target_test))
    model = Normalized(net, *norm).to(device).eval()
    timings["transfer_s"] = time.perf_counter() - start

    start = time.perf_counter()
    val_outputs = per_example_outputs(val_logits, data.target_val.labels)
    outputs = per_example_outputs(test_logits, data.target_test.labels)
    metrics["target_val_acc"] = float(val_outputs["correct"].mean())
    metrics["target_test_acc"] = float(outputs["correct"].mean())
    timings["evaluate_s"] = time.perf_counter() - start
    return SubsetRunResult(class_mask, model.cpu(), outputs, val_outputs, metrics, timings, source_model)
