"""Training the points of a counterfactual grid: in this process, or in worker processes.

With ``workers > 1`` each worker is a spawned process that loads the data once and trains
points with ``cores // workers`` torch threads, so workers do not oversubscribe the cores
(on a shared machine two 1-thread processes beat one 2-thread process by far). Every point
is its own MLflow child run, created by the process that trains it.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from tqdm.auto import tqdm

from .config import ConfigError, RunConfig

_RUNNER = {}  # the worker process's SubsetRunner


@dataclass(frozen=True)
class Point:
    """One grid point to train: training seed index, kept-class mask, tags of its run."""

    seed: int
    mask: np.ndarray  # (n_source_classes,) bool, False = removed
    tags: dict
    name: str
    parent_run_id: str


def train_point(runner, point: Point) -> str:
    """Create the point's child run and train it (ends FINISHED, or FAILED and raises)."""
    run_id = runner.client.create_run(runner.experiment_id, tags={
        **point.tags, MLFLOW_RUN_NAME: point.name, MLFLOW_PARENT_RUN_ID: point.parent_run_id}).info.run_id
    runner.run(point.seed, mask=point.mask, run_id=run_id, log_checkpoint=True, extra_tags=point.tags)
    return run_id


def _init_worker(config: RunConfig, experiment: str, tracking_uri: str, data_root, threads: int) -> None:
    import torch

    from .runner import SubsetRunner
    from .tracking import setup_tracking
    os.environ.pop("MLFLOW_RUN_ID", None)  # never log into the run of an enclosing `mlflow run`
    torch.set_num_threads(threads)
    setup_tracking(tracking_uri)
    _RUNNER["runner"] = SubsetRunner(config, experiment, data_root)


def _work(point: Point) -> str:
    return train_point(_RUNNER["runner"], point)


def train_points(runner, points: list[Point], workers: int = 1, data_root=None, progress: bool = True,
                 desc: str = "counterfactual") -> None:
    """Train ``points`` with ``runner`` (``workers == 1``) or with ``workers`` processes.

    Stops at the first failure (its run is FAILED; the others already FINISHED stay), and
    raises: rerunning the same command trains only the missing points.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {workers}")
    bar = tqdm(total=len(points), desc=desc, unit="run", disable=not progress)
    if workers == 1 or len(points) <= 1:
        for point in points:
            train_point(runner, point)
            bar.update()
        bar.close()
        return
    import mlflow
    workers = min(workers, len(points))
    threads = max(1, (os.cpu_count() or 1) // workers)
    experiment = runner.client.get_experiment(runner.experiment_id).name
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(runner.config, experiment, mlflow.get_tracking_uri(), data_root, threads))
    try:
        pending = {pool.submit(_work, p) for p in points}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                future.result()  # re-raise a worker's error here
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
