"""Jobs, tasks and one attempt at a task: what every executor runs, wherever it runs.

A :class:`Job` is what a worker needs to train models of one config (it builds a
:class:`~transfer_core.execute.runner.SubsetRunner` once). A :class:`Task` is one model: its
kept classes, its training seed, and the *key* tags that name it (``sweep_id`` + ``index``
for a sweep's model; ``counterfactual_id`` + ``order`` + ``k`` + ``seed`` for a grid point).
:func:`attempt` claims the key through the tracking store (:mod:`transfer_core.track.claims`)
and trains only if this process gets it, so executors and commands may overlap freely.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from transfer_core.config import ConfigError, RunConfig
from transfer_core.track import one_line, run_filter
from transfer_core.track.claims import Heartbeat, claim_tags, contest, is_live, is_superseded

log = logging.getLogger(__name__)


class ExecutionError(ConfigError):
    """An executor cannot start or keeps losing workers."""


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to train models of one config (picklable, hashable)."""

    config: RunConfig
    experiment: str
    tracking_uri: str
    data_root: str | None = None
    log_checkpoint: bool = False


@dataclass(frozen=True)
class Task:
    """One model to train.

    ``index`` fixes the training seed (``run_seed(sweep_seed, index)``) and, when ``mask`` is
    None, the kept classes (``class_mask(sweep_seed, index)``). ``key`` are the tags that
    name the work (no two FINISHED runs share them); ``tags`` are further tags of the run and
    ``params`` further params (e.g. a grid point's order, k and seed, which the UI can plot).
    """

    kind: str  # the run's transfer_core.kind: subset_run | counterfactual_run
    key: tuple[tuple[str, str], ...]
    index: int
    name: str  # the run's name in the MLflow UI
    parent_run_id: str
    mask: tuple[bool, ...] | None = None  # (n_source_classes,) kept classes
    tags: tuple[tuple[str, str], ...] = ()
    params: tuple[tuple[str, str], ...] = ()  # logged beside the config's params

    @property
    def filter(self) -> str:
        return run_filter(self.kind, **dict(self.key))


@dataclass
class Outcome:
    """What became of one attempt at a task.

    status: ``trained`` (by this attempt), ``done`` (FINISHED by someone else),
    ``busy`` (another live process holds it), ``failed`` (training raised; run left FAILED).
    """

    task: Task
    status: str
    run_id: str | None = None
    wall_s: float = 0.0
    error: str = ""


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads for each of ``workers`` processes sharing ``cores`` cores (at least 1)."""
    return max(1, (cores or cpu_count()) // workers)


def make_runner(job: Job, threads: int):
    """Set torch threads and tracking for this process, load the data once; returns (runner, heartbeat)."""
    import torch

    from transfer_core.execute.runner import SubsetRunner
    from transfer_core.track import setup_tracking

    os.environ.pop("MLFLOW_RUN_ID", None)  # never log into the run of an enclosing `mlflow run`
    torch.set_num_threads(threads)
    setup_tracking(job.tracking_uri)
    runner = SubsetRunner(job.config, job.experiment, job.data_root)
    return runner, Heartbeat(runner.client)


def attempt(runner, job: Job, task: Task, heartbeat: Heartbeat) -> Outcome:
    """Claim ``task`` and, if this process gets it, train and log it as a child of its parent run."""
    client, experiment_id = runner.client, runner.experiment_id
    try:
        # Read-only look first, so waiting on a task another process trains writes nothing.
        seen = [r for r in client.search_runs([experiment_id], task.filter, max_results=1000)
                if not is_superseded(r)]
        if any(r.info.status == "FINISHED" for r in seen):
            return Outcome(task, "done")
        if any(is_live(r) for r in seen):
            return Outcome(task, "busy")
        tags = {**runner.run_tags(task.index, task.kind), **dict(task.key), **dict(task.tags)}
        run_id = runner.create_run(task.index, {**tags, **claim_tags()}, task.name, task.parent_run_id)
        state = contest(client, experiment_id, run_id, task.filter)
    except Exception as exc:  # the store failed us (locked, unreachable): nothing trained, retried next time
        log.warning("could not claim %s: %s", task.name, one_line(exc))
        return Outcome(task, "failed", error=f"claim failed: {one_line(exc)}")
    if state != "claimed":
        return Outcome(task, state)
    heartbeat.hold(run_id)
    start = time.perf_counter()
    mask = None if task.mask is None else np.array(task.mask, dtype=bool)
    try:
        runner.run(task.index, mask=mask, run_id=run_id, tags=tags, params=dict(task.params),
                   log_checkpoint=job.log_checkpoint)
    except Exception as exc:  # the runner has marked the run FAILED; the next command retries it
        log.warning("%s failed: %s", task.name, one_line(exc))
        return Outcome(task, "failed", run_id, time.perf_counter() - start, one_line(exc))
    finally:
        heartbeat.release(run_id)
    return Outcome(task, "trained", run_id, time.perf_counter() - start)
