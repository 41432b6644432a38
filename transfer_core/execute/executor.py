"""Run tasks to an end on an executor: every retraining (sweeps and counterfactual grids) goes here.

``local``  ``workers`` processes on this machine (in-process when 1), each with
           ``cores // workers`` torch threads (:mod:`transfer_core.execute.local`).
``ray``    each pack is a Ray task with ``num_cpus`` / (fractional) ``num_gpus``, on a local Ray
           instance or a cluster (:mod:`transfer_core.execute.ray_cluster`).

Tasks go to workers in packs of up to ``pack`` models, trained together as one network on
one device (:mod:`transfer_core.execute.pack_tasks`); with ``pack = 1`` each model trains alone.

Every attempt claims its task through the tracking store first, so executors and commands
may overlap freely: a task another live process holds is checked again later, with a growing
random delay, until it is FINISHED there or free to train here.
"""
from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque

from tqdm.auto import tqdm

from transfer_core.execute.settings import EXECUTORS, ExecutorSettings
from transfer_core.execute.tasks import Job, Outcome, Task

BUSY_RETRY_S = (3.0, 60.0)  # first and longest wait before re-checking a task another process holds

def make_executor(job: Job, settings: ExecutorSettings, n_tasks: int | None = None):
    """The executor ``settings.executor`` names in :data:`EXECUTORS`; a local one starts at most ``n_tasks`` workers."""
    return EXECUTORS[settings.executor].make(job, settings, n_tasks)


def drive(executor, tasks: list[Task], n_total: int | None = None, n_done: int = 0, progress: bool = True,
          desc: str = "train", pack: int = 1) -> list[Outcome]:
    """Run every task to an end (trained, done elsewhere, or failed); returns those outcomes.

    Tasks are submitted in packs of up to ``pack``, in order; a task another process holds
    waits and joins a later pack. The progress bar counts ``n_done`` (already FINISHED) of
    ``n_total`` (default: all tasks).
    """
    todo, waiting = deque(tasks), []  # waiting: heap of (monotonic time to retry, tie-break, task)
    waits: dict[Task, float] = {}
    outcomes, in_flight, tie = [], 0, 0
    bar = tqdm(total=n_total if n_total is not None else n_done + len(tasks), initial=n_done,
               disable=not progress, desc=desc, unit="run", dynamic_ncols=True)
    counts = {"trained": 0, "done": 0, "failed": 0}  # done: FINISHED by another process meanwhile
    try:
        while todo or waiting or in_flight:
            now = time.monotonic()
            while waiting and waiting[0][0] <= now:
                todo.append(heapq.heappop(waiting)[2])
            while todo and in_flight < executor.capacity:
                executor.submit(tuple(todo.popleft() for _ in range(min(pack, len(todo)))))
                in_flight += 1
            if not in_flight:
                time.sleep(max(0.0, waiting[0][0] - now))
                continue
            results = executor.poll(timeout=1.0)
            if results is None:
                continue
            in_flight -= 1
            for outcome in results:
                if outcome.status == "busy":
                    wait = min(BUSY_RETRY_S[1], 2 * waits.get(outcome.task, BUSY_RETRY_S[0] / 2))
                    waits[outcome.task] = wait
                    tie += 1
                    heapq.heappush(waiting, (time.monotonic() + wait * random.uniform(0.7, 1.3), tie, outcome.task))
                    continue
                outcomes.append(outcome)
                counts[outcome.status] += 1
                bar.update(1)
            bar.set_postfix(counts, waiting=len(waiting), refresh=True)
    finally:
        bar.close()
    return outcomes


def run_tasks(job: Job, tasks: list[Task], settings: ExecutorSettings = ExecutorSettings(), *,
              n_total: int | None = None, n_done: int = 0, progress: bool = True,
              desc: str = "train") -> list[Outcome]:
    """Train ``tasks`` on a new executor (see :class:`ExecutorSettings`), in packs of ``job.pack``; then close it."""
    if not tasks:
        return []
    runner = make_executor(job, settings, math.ceil(len(tasks) / job.pack))
    try:
        return drive(runner, tasks, n_total, n_done, progress, desc, job.pack)
    finally:
        runner.close()
