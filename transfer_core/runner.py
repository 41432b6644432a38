"""SubsetRunner: load data once, then run any number of subset runs as MLflow runs."""
from __future__ import annotations

import logging

import numpy as np
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from .config import RunConfig
from .data import load_split, load_transfer_data
from .subsets import check_mask, class_mask, run_seed
from .tracking import get_experiment_id, log_subset_result, mark_failed, run_tags
from .training import pick_device
from .transfer import run_subset

log = logging.getLogger(__name__)


class SubsetRunner:
    """Holds the decoded data of one config; :meth:`run` trains and logs one model.

    Example::

        runner = SubsetRunner(build_config("quick"), experiment="demo")
        run_id = runner.run(index=0)
    """

    def __init__(self, config: RunConfig, experiment: str = "transfer_core", data_root=None, device=None):
        self.config = config.validate()
        self.device = pick_device(device)
        self.data = load_transfer_data(config.data, data_root)
        try:  # source accuracy is measured on held-out source images when the source has them
            self.source_test = load_split(config.data.source, "test", config.data.resolution, data_root)
        except Exception:  # e.g. an image folder with no test/ or val/ split
            self.source_test = None
        self.experiment_id = get_experiment_id(experiment)
        self.client = MlflowClient()

    @property
    def source_class_names(self) -> list[str]:
        return self.data.source.class_names

    def mask_for(self, index: int) -> np.ndarray:
        return class_mask(self.config.sweep_seed, index, self.data.source.n_classes, self.config.alpha)

    def create_run(self, index: int, sweep_id: str | None = None, parent_run_id: str | None = None,
                   extra_tags: dict | None = None) -> str:
        tags = {**run_tags(self.config, index, sweep_id), **(extra_tags or {})}
        tags[MLFLOW_RUN_NAME] = f"{sweep_id or 'run'}-{index:05d}"
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        return self.client.create_run(self.experiment_id, tags=tags).info.run_id

    def run(self, index: int, *, mask: np.ndarray | None = None, run_id: str | None = None,
            sweep_id: str | None = None, parent_run_id: str | None = None, log_checkpoint: bool = False,
            extra_tags: dict | None = None, on_epoch=None):
        """Train model ``index`` and log it; returns ``(run_id, SubsetRunResult)``.

        ``mask`` defaults to ``class_mask(sweep_seed, index, ...)``. ``run_id`` continues a run
        created earlier (a sweep's claim); otherwise a new run is created. The run ends
        FINISHED only after every artifact is written; on any error it ends FAILED.
        """
        mask = self.mask_for(index) if mask is None else check_mask(mask, self.data.source.n_classes)
        if run_id is None:
            run_id = self.create_run(index, sweep_id, parent_run_id, extra_tags)
        else:  # a run made elsewhere (`mlflow run`, a sweep's claim): make sure it carries our tags
            tags = {**run_tags(self.config, index, sweep_id), **(extra_tags or {})}
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        seed = run_seed(self.config.sweep_seed, index)
        try:
            result = run_subset(self.config, self.data, mask, seed, self.source_test, self.device, on_epoch)
            log_subset_result(self.client, run_id, self.config, result, index, seed, self.source_class_names,
                              self.data.target_test.labels, log_checkpoint)
        except BaseException as exc:
            mark_failed(self.client, run_id, exc)
            raise
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id, result
