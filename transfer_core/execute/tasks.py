"""Jobs, tasks and one attempt at a pack of tasks: what every executor runs, wherever it runs.

A :class:`Job` is what a worker needs to train models of one config (it builds a
:class:`~transfer_core.execute.subset_runner.SubsetRunner` once). A :class:`Task` is one model: its
kept classes, its training seed, and the *key* tags that name it (``sweep_id`` + ``index``
for a sweep's model; ``grid_id`` + ``order`` + ``k`` + ``seed`` for a grid point).
Executors hand workers *packs*: tuples of up to ``Job.pack`` tasks. :func:`attempt_pack`
claims each task's key through the tracking store (:mod:`transfer_core.track.claims`) and
trains the ones this process gets, together (:mod:`transfer_core.execute.pack_tasks`) or, with
``Job.pack == 1``, one at a time; so executors and commands may overlap freely.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from transfer_core.config import RunConfig
from transfer_core.data import DataDirs
from transfer_core.track import one_line, run_filter
from transfer_core.track.claims import Heartbeat, claim_tags, contest, is_live, is_superseded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to train models of one config (picklable, hashable)."""

    config: RunConfig
    experiment: str
    tracking_uri: str
    dirs: DataDirs = field(default_factory=DataDirs)
    log_checkpoint: bool = False
    pack: int = 1  # models trained at once as one packed network (1: each alone, through run_subset)
    compile: bool = False  # torch.compile the packed network (once per process)

    @property
    def packed(self) -> bool:
        """Whether models train through the packed trainer (even a pack of one)."""
        return self.pack > 1 or self.compile


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
    """Set torch threads for this process and load the data once; returns (runner, heartbeat)."""
    import torch

    from transfer_core.execute.context import Context
    from transfer_core.execute.subset_runner import SubsetRunner

    torch.set_num_threads(threads)
    runner = SubsetRunner(job.config, job.experiment, Context(job.tracking_uri, job.dirs))
    return runner, Heartbeat(runner.client)


def claim(runner, task: Task) -> Outcome | tuple[str, dict[str, str]]:
    """Claim ``task`` through the tracking store: ``(run_id, tags)`` of our claim, or the Outcome if we did not."""
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
    return (run_id, tags) if state == "claimed" else Outcome(task, state)


def attempt_pack(runner, job: Job, tasks: tuple[Task, ...], heartbeat: Heartbeat) -> list[Outcome]:
    """Claim each task and train the ones this process gets, each logged as a child of its parent run.

    Returns one Outcome per task, in order. With ``job.packed`` the claimed tasks train together
    (:func:`transfer_core.execute.pack_tasks.train_pack`); otherwise one by one. A process killed
    meanwhile loses only the runs it had claimed: they are left RUNNING, and the next command
    supersedes and retrains them.
    """
    outcomes: dict[Task, Outcome] = {}
    claimed: list[tuple[Task, str, dict[str, str]]] = []
    for task in tasks:
        got = claim(runner, task)
        if isinstance(got, Outcome):
            outcomes[task] = got
        else:
            claimed.append((task, *got))
    for _, run_id, _ in claimed:
        heartbeat.hold(run_id)
    try:
        if job.packed and claimed:
            from transfer_core.execute.pack_tasks import train_pack
            start = time.perf_counter()
            errors = train_pack(runner, job, claimed)
            wall = time.perf_counter() - start
            for (task, run_id, _), error in zip(claimed, errors):
                outcomes[task] = Outcome(task, "trained", run_id, wall) if error is None else \
                    Outcome(task, "failed", run_id, wall, error)
        for task, run_id, tags in ([] if job.packed else claimed):
            outcomes[task] = _train_one(runner, job, task, run_id, tags)
    finally:
        for _, run_id, _ in claimed:
            heartbeat.release(run_id)
    return [outcomes[task] for task in tasks]


def _train_one(runner, job: Job, task: Task, run_id: str, tags: dict[str, str]) -> Outcome:
    start = time.perf_counter()
    mask = None if task.mask is None else np.array(task.mask, dtype=bool)
    try:
        runner.run(task.index, mask=mask, run_id=run_id, tags=tags, params=dict(task.params),
                   log_checkpoint=job.log_checkpoint)
    except Exception as exc:  # the runner has marked the run FAILED; the next command retries it
        log.warning("%s failed: %s", task.name, one_line(exc))
        return Outcome(task, "failed", run_id, time.perf_counter() - start, one_line(exc))
    return Outcome(task, "trained", run_id, time.perf_counter() - start)
