"""SubsetRunner: load data once, then train any number of subset models, each as one MLflow run."""
from __future__ import annotations

import logging

import numpy as np
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from transfer_core.config import RunConfig
from transfer_core.data import DataError, check_mask, class_mask, load_source, load_transfer_data, run_seed
from transfer_core.execute.context import Context
from transfer_core.track import KIND_TAG, get_experiment_id, log_subset_result, run_scope, set_tags
from transfer_core.track.datasets import RunDatasets
from transfer_core.track.runs import SUBSET_RUN
from transfer_core.train import pick_device, run_subset

log = logging.getLogger(__name__)


class SubsetRunner:
    """Holds the decoded data of one config; :meth:`run` trains and logs one model.

    Example::

        runner = SubsetRunner(build_config("quick"), "demo", Context.open(data_root="../shared/data"))
        run_id, result = runner.run(index=0)
    """

    def __init__(self, config: RunConfig, experiment: str, ctx: Context, device=None):
        self.config = config
        self.ctx = ctx
        self.device = pick_device(device)
        self.data = load_transfer_data(config.data, ctx.dirs)
        try:  # source accuracy is measured on held-out source images when the source has them
            self.source_test = load_source(config.data, "test", ctx.dirs)
        except DataError:  # e.g. an image folder with no test/ or val/ split
            self.source_test = None
        self.client = ctx.client
        self.experiment_id = get_experiment_id(self.client, experiment)
        self._datasets = None

    @property
    def datasets(self) -> RunDatasets:
        """The runs' dataset inputs; the data is hashed on first use (tuning never needs it)."""
        if self._datasets is None:
            self._datasets = RunDatasets(self.config.data, self.data)
        return self._datasets

    @property
    def source_class_names(self) -> list[str]:
        return self.data.source.class_names

    def mask_for(self, index: int) -> np.ndarray:
        """The class mask ``(n_source_classes,)`` of model ``index`` of this config's sweep."""
        return class_mask(self.config.sweep_seed, index, self.data.source.n_classes, self.config.alpha)

    def run_tags(self, index: int, kind: str = SUBSET_RUN) -> dict[str, str]:
        return {KIND_TAG: kind, "index": str(index), "config_hash": self.config.config_hash()}

    def run_name(self, index: int) -> str:
        """The UI name of model ``index`` when it belongs to no sweep or grid: ``subset-<config hash>-<index>``."""
        return f"subset-{self.config.config_hash()}-{index:05d}"

    def create_run(self, index: int, tags: dict[str, str] | None = None, name: str | None = None,
                   parent_run_id: str | None = None) -> str:
        """A new RUNNING run for model ``index``, tagged (``tags`` override the defaults)."""
        tags = {**self.run_tags(index), **(tags or {}), MLFLOW_RUN_NAME: name or self.run_name(index)}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        return self.client.create_run(self.experiment_id, tags=tags).info.run_id

    def run(self, index: int, *, mask: np.ndarray | None = None, run_id: str | None = None,
            tags: dict[str, str] | None = None, params: dict[str, str] | None = None, name: str | None = None,
            log_checkpoint: bool = False, on_epoch=None):
        """Train model ``index`` and log it; returns ``(run_id, SubsetRunResult)``.

        ``mask`` defaults to ``class_mask(sweep_seed, index, ...)``; the training seed is always
        ``run_seed(sweep_seed, index)``. ``run_id`` continues a run created earlier (a claim, or
        ``mlflow run``'s, which then gets ``name``); otherwise a new run is created. The run ends FINISHED only after
        every artifact is written; on any error it ends FAILED with the reason. ``params`` are
        logged beside the config's; the source subset and target splits are logged as dataset inputs.
        """
        mask = self.mask_for(index) if mask is None else check_mask(mask, self.data.source.n_classes)
        if run_id is None:
            run_id = self.create_run(index, tags, name)
        else:  # a run made elsewhere: make sure it carries our tags
            set_tags(self.client, run_id, {**self.run_tags(index), **(tags or {}),
                                           **({MLFLOW_RUN_NAME: name} if name else {})})
        seed = run_seed(self.config.sweep_seed, index)
        with run_scope(self.client, run_id):
            result = run_subset(self.config, self.data, mask, seed, self.source_test, self.device, on_epoch)
            log_subset_result(self.client, run_id, self.config, result, index, seed, self.data, log_checkpoint,
                              self.datasets.inputs(mask), params)
        return run_id, result
