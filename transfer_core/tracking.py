"""MLflow plumbing: the store, experiments, and one subset run as one MLflow run.

The default store is embedded: ``sqlite:///mlruns/mlflow.db`` with artifacts under
``mlruns/``. ``$MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) points elsewhere, e.g. at an
``mlflow server`` that many workers share.

Run layout (what the analysis reads back):
  params     every config field (``data.source``, ``pretrain.epochs``, ``subset.alpha``, ...),
             ``subset.index``, ``subset.seed``, ``subset.n_source_classes``, ``subset.n_kept``
  tags       ``transfer_core.kind`` = subset_run, ``sweep_id``, ``index``, ``config_hash``
  metrics    ``source_acc``, ``target_val_acc``, ``target_test_acc``, ``*_s`` phase times
  artifacts  ``class_mask.npy`` (n_source_classes,) bool, ``source_classes.json``,
             ``target_outputs.npz`` (margin, prob, correct, pred, labels; test-set order),
             ``model.pt`` (optional checkpoint of the transferred model)
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from .config import ConfigError, RunConfig, from_params
from .evaluation import save_outputs
from .models import Normalized, build_model

DEFAULT_STORE_DIR = Path("mlruns")
MASK_ARTIFACT = "class_mask.npy"
CLASSES_ARTIFACT = "source_classes.json"
OUTPUTS_ARTIFACT = "target_outputs.npz"
CHECKPOINT_ARTIFACT = "model.pt"
KIND_TAG = "transfer_core.kind"


class TrackingError(ConfigError):
    """The tracking store cannot be reached or holds something unexpected."""


def default_tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_STORE_DIR.mkdir(exist_ok=True)
    return f"sqlite:///{(DEFAULT_STORE_DIR / 'mlflow.db').resolve()}"


def setup_tracking(tracking_uri: str | None = None) -> str:
    """Point MLflow at ``tracking_uri`` (default: the embedded store) and check it answers."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).read()
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(f"cannot reach the MLflow tracking server at {uri} ({exc}); start it "
                                "with `mlflow server` or fix --tracking-uri / MLFLOW_TRACKING_URI") from None
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # child processes (workers, nested mlflow.run) inherit it
    return uri


def get_experiment_id(name: str) -> str:
    """The id of experiment ``name``, created if missing (safe when two processes race)."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment {name!r} is deleted; restore it in the MLflow UI "
                                "or choose another --experiment")
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:
        return client.get_experiment_by_name(name).experiment_id


def run_tags(config: RunConfig, index: int, sweep_id: str | None) -> dict[str, str]:
    tags = {KIND_TAG: "subset_run", "index": str(index), "config_hash": config.config_hash()}
    if sweep_id:
        tags["sweep_id"] = sweep_id
    return tags


def log_subset_result(client: MlflowClient, run_id: str, config: RunConfig, result, index: int, seed: int,
                      source_class_names: list[str], target_labels: torch.Tensor,
                      log_checkpoint: bool) -> None:
    """Write everything about a finished run in two calls: one batch, one artifact upload."""
    now = int(time.time() * 1000)
    params = {**config.to_params(), "subset.index": str(index), "subset.seed": str(seed),
              "subset.n_source_classes": str(len(source_class_names)),
              "subset.n_kept": str(int(result.class_mask.sum()))}
    metrics = {**result.metrics, **result.timings}
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     params=[Param(k, v) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / MASK_ARTIFACT, result.class_mask.astype(bool))
        (tmp / CLASSES_ARTIFACT).write_text(json.dumps(source_class_names))
        save_outputs(tmp / OUTPUTS_ARTIFACT, result.target_outputs, target_labels)
        if log_checkpoint:
            save_checkpoint(tmp / CHECKPOINT_ARTIFACT, result.model, config)
        client.log_artifacts(run_id, str(tmp))


def mark_failed(client: MlflowClient, run_id: str, exc: BaseException) -> None:
    message = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000]
    client.set_tag(run_id, "error", message)
    client.set_terminated(run_id, status="FAILED")


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


def run_config(run) -> RunConfig:
    """The RunConfig a logged run used, rebuilt from its params."""
    return from_params(run.data.params)


def to_local_path(artifact_uri: str) -> Path | None:
    """The local folder behind ``artifact_uri``, or None when it is remote."""
    if artifact_uri.startswith("file://"):
        return Path(artifact_uri[len("file://"):])
    if "://" not in artifact_uri and ":" not in artifact_uri.split("/")[0]:
        return Path(artifact_uri)
    return None


def artifact_path(run, name: str) -> Path:
    """A local path to artifact ``name`` of ``run``: read in place when local, else downloaded."""
    local = to_local_path(run.info.artifact_uri)
    if local is not None:
        return local / name
    return Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=name))
