"""The data a run trained and scored on, as MLflow dataset inputs (the UI's Dataset column).

Each subset run and counterfactual run logs four inputs, one per MLflow context:

  ``pretrain``    the source images it actually pretrained on: name ``<source>: <k> of <K> classes``,
                  digest of the kept classes' pixels and labels (equal digest = same source data)
  ``transfer``    the target train split it fitted the transfer on
  ``validation``  the target validation split (carved from the train split by ``data.split_seed``)
  ``evaluation``  the target test split it was scored on

Digests come from :mod:`transfer_core.data.digest`; :class:`RunDatasets` hashes the data once
(one pass over the images per process), after which a mask's inputs cost microseconds to build
and one ``log_inputs`` call to log. This is the client-side form of ``mlflow.log_input``, for runs
that are not the active run.
"""
from __future__ import annotations

import json
import logging
import random
import time

import numpy as np
from mlflow.data.schema import TensorDatasetSchema
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from transfer_core.config import DataConfig
from transfer_core.data import ImageSet, TransferData, class_digests, set_digest, subset_digest

log = logging.getLogger(__name__)
SOURCE_TYPE = "transfer_core"  # the source JSON holds the dataset spec and how the split was drawn
CONTEXTS = ("pretrain", "transfer", "validation", "evaluation")
LOG_TRIES = 6  # concurrent first logs of one dataset can collide in the store; a retry finds it made


def _schema(images: ImageSet) -> str:
    side = getattr(images, "resolution", None)  # a streamed source: images are decoded at this size
    shape = (-1, 3, side, side) if side else (-1, *images.images.shape[1:])
    return json.dumps(TensorDatasetSchema(
        features=Schema([TensorSpec(np.dtype(np.uint8), shape, "images")]),
        targets=Schema([TensorSpec(np.dtype(np.int64), (-1,), "labels")])).to_dict())


def _dataset(name: str, digest: str, source: dict, schema: str, n_images: int, n_classes: int) -> Dataset:
    profile = {"num_images": n_images, "num_classes": n_classes}
    return Dataset(name=name, digest=digest, source_type=SOURCE_TYPE, source=json.dumps(source),
                   schema=schema, profile=json.dumps(profile))


def _input(dataset: Dataset, context: str) -> DatasetInput:
    return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])


class RunDatasets:
    """The dataset inputs of runs of one data config; hashes ``data`` once, at construction.

    ``inputs(mask)`` -> four :class:`~mlflow.entities.DatasetInput` (see the module docstring),
    ``mask (n_source_classes,)`` bool the kept source classes.
    """

    def __init__(self, config: DataConfig, data: TransferData):
        self.class_digests = class_digests(data.source)
        self.class_sizes = np.bincount(data.source.labels.numpy(), minlength=data.source.n_classes)
        self.source_spec = {"spec": config.source, "split": "train", "resolution": config.resolution,
                            "images_per_class": config.source_images_per_class, "split_seed": config.split_seed,
                            "store": config.source_store}
        self.source_schema = _schema(data.source)
        split = {"spec": config.target, "resolution": config.resolution, "split_seed": config.split_seed}
        carved = {**split, "split": "train", "images": config.target_train_images,
                  "val_fraction": config.val_fraction}
        target = {"transfer": ("train", data.target_train, {**carved, "part": "train"}),
                  "validation": ("validation", data.target_val, {**carved, "part": "validation"}),
                  "evaluation": ("test", data.target_test, {**split, "split": "test"})}
        self.target_inputs = [
            _input(_dataset(f"{config.target} {part}", set_digest(images), source, _schema(images), len(images),
                            images.n_classes), context)
            for context, (part, images, source) in target.items()]

    def source_input(self, mask: np.ndarray) -> DatasetInput:
        mask = np.asarray(mask, dtype=bool)
        kept = int(mask.sum())
        return _input(_dataset(f"{self.source_spec['spec']}: {kept} of {len(mask)} classes",
                               subset_digest(self.class_digests, mask), {**self.source_spec, "classes_kept": kept},
                               self.source_schema, int(self.class_sizes[mask].sum()), kept), "pretrain")

    def inputs(self, mask: np.ndarray) -> list[DatasetInput]:
        return [self.source_input(mask), *self.target_inputs]


def log_dataset_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> bool:
    """Log ``inputs`` on ``run_id``; returns False (with a warning) if the store kept refusing.

    Two processes logging a new dataset at once can both try to create it and one is refused
    by the store; the retry then finds it. Inputs describe a run and are never worth failing it.
    """
    for attempt in range(LOG_TRIES):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return True
        except Exception as exc:  # MlflowException, or a driver error through the REST store
            last = exc
            time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
    reason = str(last).strip().splitlines()[0][:300] if str(last).strip() else type(last).__name__
    log.warning("run %s: could not log its dataset inputs (%s); the run is kept without them", run_id, reason)
    return False
