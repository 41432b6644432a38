"""What one subset run logs, and the model checkpoints runs keep.

Run layout (what the analysis reads back):
  params     every config field (``data.source``, ``pretrain.epochs``, ``subset.alpha``, ...),
             ``subset.index``, ``subset.seed``, ``subset.n_source_classes``, ``subset.n_kept``,
             ``normalization.mean`` / ``.std`` (the whole source's, the same for every mask)
  tags       ``transfer_core.kind`` = subset_run (or counterfactual_run), ``index``, ``config_hash``, a note,
             and the keys of the sweep or grid it belongs to (a grid point also has params ``order``,
             ``k``, ``seed``, for the UI's charts)
  inputs     the source subset and the target splits as MLflow datasets (:mod:`transfer_core.track.datasets`)
  metrics    ``source_acc``, ``target_val_acc``, ``target_test_acc``, ``*_s`` phase times
  artifacts  ``class_mask.npy`` (n_source_classes,) bool, ``source_classes.json``,
             ``target_outputs.npz`` (margin, prob, correct, pred, labels; test-set order),
             ``target_val_outputs.npz`` (the same for the validation split, in its order; its sha256
             is the tag ``val_outputs_digest``, so a file replaced later is refused, not rescored),
             ``model.pt`` (optional checkpoint of the transferred model)
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from transfer_core.config import RunConfig
from transfer_core.data import file_digest
from transfer_core.track.datasets import log_dataset_inputs
from transfer_core.track.runs import NOTE_TAG, metric_value, now_ms
from transfer_core.train import Normalized, build_model, save_outputs

MASK_ARTIFACT = "class_mask.npy"
CLASSES_ARTIFACT = "source_classes.json"
OUTPUTS_ARTIFACT = "target_outputs.npz"  # the target test split
VAL_OUTPUTS_ARTIFACT = "target_val_outputs.npz"  # the target validation split
CHECKPOINT_ARTIFACT = "model.pt"
VAL_OUTPUTS_DIGEST_TAG = "val_outputs_digest"  # file_digest of VAL_OUTPUTS_ARTIFACT as logged


def log_subset_result(client: MlflowClient, run_id: str, config: RunConfig, result, index: int, seed: int,
                      data, log_checkpoint: bool, inputs: list | None = None,
                      extra_params: dict[str, str] | None = None) -> None:
    """Write everything about a finished run in three calls: one batch, the dataset inputs, one upload.

    ``data`` is the run's :class:`~transfer_core.data.TransferData` (class names, labels, normalisation);
    ``inputs`` its :class:`~mlflow.entities.DatasetInput` list; ``extra_params`` more params to log.
    """
    source_class_names = data.source.class_names
    mean, std = data.source_norm
    params = {**config.to_params(), "subset.index": str(index), "subset.seed": str(seed),
              "subset.n_source_classes": str(len(source_class_names)),
              "subset.n_kept": str(int(result.class_mask.sum())),
              "normalization.mean": json.dumps([round(float(v), 3) for v in mean]),
              "normalization.std": json.dumps([round(float(v), 3) for v in std]), **(extra_params or {})}
    metrics = {**result.metrics, **result.timings}
    now = now_ms()
    kept = int(result.class_mask.sum())
    note = (f"Pretrained from scratch on {kept} of the {len(source_class_names)} `{config.data.source}` classes "
            f"(`{CLASSES_ARTIFACT}`, `{MASK_ARTIFACT}`; the `pretrain` dataset), transferred to "
            f"`{config.data.target}` ({config.transfer.mode}). Per-example outputs: `{OUTPUTS_ARTIFACT}` (test), "
            f"`{VAL_OUTPUTS_ARTIFACT}` (validation).")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / MASK_ARTIFACT, result.class_mask.astype(bool))
        (tmp / CLASSES_ARTIFACT).write_text(json.dumps(source_class_names))
        save_outputs(tmp / OUTPUTS_ARTIFACT, result.target_outputs, data.target_test.labels)
        save_outputs(tmp / VAL_OUTPUTS_ARTIFACT, result.val_outputs, data.target_val.labels)
        if log_checkpoint:
            save_checkpoint(tmp / CHECKPOINT_ARTIFACT, result.model, config)
        tags = {NOTE_TAG: note, VAL_OUTPUTS_DIGEST_TAG: file_digest(tmp / VAL_OUTPUTS_ARTIFACT)}
        client.log_batch(run_id, metrics=[Metric(k, metric_value(v), now, 0) for k, v in metrics.items()],
                         params=[Param(k, str(v)) for k, v in params.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        if inputs:
            log_dataset_inputs(client, run_id, inputs)
        client.log_artifacts(run_id, str(tmp))


def save_checkpoint(path, model: Normalized, config: RunConfig) -> None:
    """The transferred model with what rebuilds it: arch, width, classes, config params."""
    net = model.net
    torch.save({"arch": config.pretrain.arch, "width": config.pretrain.width,
                "n_classes": net.head.out_features, "state_dict": model.state_dict(),
                "params": config.to_params()}, path)


def load_checkpoint(path) -> Normalized:
    """Rebuild a :class:`Normalized` model from :func:`save_checkpoint`'s file (eval mode)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = Normalized(build_model(ckpt["arch"], ckpt["n_classes"], ckpt["width"]),
                       torch.zeros(3), torch.ones(3))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
