"""Executors: where the subset runs of a sweep train.

``local``  ``workers`` processes on this machine (in-process when 1); each loads the data once
           and takes indices from a queue, with torch threads split so they do not
           oversubscribe the cores.
``ray``    each index is a Ray task with ``num_cpus`` / fractional ``num_gpus``, on a local
           Ray instance or a cluster (``--ray-address``). Needs ``pip install 'transfer-core[ray]'``.

Every attempt claims its index through the tracking store first
(:mod:`transfer_core.claims`), so executors may overlap freely, even across commands.
:func:`drive` feeds an executor, retries indices that another process holds, and shows
a progress bar.
"""
from __future__ import annotations

import heapq
import logging
import multiprocessing as mp
import os
import queue
import random
import time
import traceback
from collections import deque
from dataclasses import dataclass

from tqdm.auto import tqdm

from .claims import Heartbeat, claim_tags, contest, is_live, is_superseded, key_filter
from .config import ConfigError, RunConfig

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
RAY_MISSING = ("the ray executor needs Ray, which is not installed; run pip install 'transfer-core[ray]' "
               "or use --executor local")
BUSY_RETRY_S = (3.0, 60.0)  # first and longest wait before re-checking an index another process holds


class ExecutionError(ConfigError):
    """An executor cannot start or keeps losing workers."""


@dataclass(frozen=True)
class SweepTask:
    """Everything a worker needs to train indices of one sweep (picklable)."""

    config: RunConfig
    experiment: str
    tracking_uri: str
    sweep_id: str
    parent_run_id: str
    data_root: str | None = None
    log_checkpoint: bool = False


@dataclass
class Outcome:
    """What became of one attempt at an index.

    status: ``trained`` (by this attempt), ``done`` (FINISHED by someone else),
    ``busy`` (another live process holds it), ``failed`` (training raised; run left FAILED).
    """

    index: int
    status: str
    run_id: str | None = None
    wall_s: float = 0.0
    error: str = ""


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads for each of ``workers`` processes sharing ``cores`` cores (at least 1)."""
    return max(1, (cores or cpu_count()) // workers)


def one_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1][:500]


def attempt_index(runner, task: SweepTask, index: int, heartbeat: Heartbeat) -> Outcome:
    """Claim ``index`` and, if this process gets it, train and log it as a child of the sweep."""
    client, experiment_id = runner.client, runner.experiment_id
    key = key_filter(task.sweep_id, index)
    try:
        # Read-only look first, so waiting on an index another process trains writes nothing.
        seen = [r for r in client.search_runs([experiment_id], key, max_results=1000) if not is_superseded(r)]
        if any(r.info.status == "FINISHED" for r in seen):
            return Outcome(index, "done")
        if any(is_live(r) for r in seen):
            return Outcome(index, "busy")
        run_id = runner.create_run(index, task.sweep_id, task.parent_run_id, extra_tags=claim_tags())
        state = contest(client, experiment_id, run_id, key)
    except Exception as exc:  # the store failed us (locked, unreachable): nothing trained, retried next time
        log.warning("could not claim index %d: %s", index, one_line(exc))
        return Outcome(index, "failed", error=f"claim failed: {one_line(exc)}")
    if state != "claimed":
        return Outcome(index, state)
    heartbeat.hold(run_id)
    start = time.perf_counter()
    try:
        runner.run(index, run_id=run_id, sweep_id=task.sweep_id, parent_run_id=task.parent_run_id,
                   log_checkpoint=task.log_checkpoint)
    except Exception as exc:  # the runner has marked the run FAILED; a later sweep retries it
        log.warning("index %d failed: %s", index, one_line(exc))
        return Outcome(index, "failed", run_id, time.perf_counter() - start, one_line(exc))
    finally:
        heartbeat.release(run_id)
    return Outcome(index, "trained", run_id, time.perf_counter() - start)


def make_runner(task: SweepTask, threads: int):
    """Set threads and tracking for this process and load the data once."""
    import torch

    from .runner import SubsetRunner
    from .tracking import setup_tracking

    torch.set_num_threads(threads)
    setup_tracking(task.tracking_uri)
    runner = SubsetRunner(task.config, task.experiment, task.data_root)
    return runner, Heartbeat(runner.client)


class LocalExecutor:
    """``workers`` processes on this machine; with one worker, everything runs in this process.

    Each worker has its own inbox, so the index of a worker that dies is known and reported.
    """

    def __init__(self, task: SweepTask, workers: int):
        self.task, self.capacity = task, workers
        self.threads = threads_per_worker(workers)
        self._inline: deque[int] = deque()
        self._procs: dict[int, mp.Process] = {}
        self._inboxes: dict[int, object] = {}
        self._current: dict[int, int | None] = {}  # the index each worker trains, None when idle
        self._restarts = 0
        if workers == 1:
            self.runner, self.heartbeat = make_runner(task, self.threads)
            return
        self._ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch or sqlite state
        self._results = self._ctx.Queue()
        for wid in range(workers):
            self._start_worker(wid)
        self._await_ready(workers)

    def _start_worker(self, wid: int) -> None:
        inbox = self._ctx.Queue()
        proc = self._ctx.Process(target=_worker_main, name=f"sweep-worker-{wid}",
                                 args=(wid, self.task, self.threads, inbox, self._results))
        proc.start()
        self._procs[wid], self._inboxes[wid], self._current[wid] = proc, inbox, None

    def _await_ready(self, n: int) -> None:
        """Wait until every worker has loaded its data, so a bad config stops the sweep before any claim."""
        ready = 0
        while ready < n:
            try:
                kind, wid, payload = self._results.get(timeout=5)
            except queue.Empty:
                dead = [p for p in self._procs.values() if not p.is_alive()]
                if dead:
                    self.close()
                    raise ExecutionError(f"a sweep worker exited while starting (exit code {dead[0].exitcode}); "
                                         "run with --workers 1 to see why") from None
                continue
            if kind == "init_error":
                self.close()
                raise ExecutionError(payload)
            ready += kind == "ready"

    def submit(self, index: int) -> None:
        if not self._procs:
            self._inline.append(index)
            return
        idle = [w for w, current in self._current.items() if current is None]
        wid = next((w for w in idle if self._procs[w].is_alive()), idle[0])
        if not self._procs[wid].is_alive():  # replace a dead worker only when there is work for it
            self._restarts += 1
            if self._restarts > 2 * self.capacity:
                raise ExecutionError(f"sweep workers keep dying (last exit code {self._procs[wid].exitcode}); "
                                     "check memory use, or lower --workers")
            self._start_worker(wid)
        self._current[wid] = index
        self._inboxes[wid].put(index)

    def poll(self, timeout: float) -> Outcome | None:
        if not self._procs:
            return attempt_index(self.runner, self.task, self._inline.popleft(), self.heartbeat)
        try:
            kind, wid, payload = self._results.get(timeout=timeout)
        except queue.Empty:
            return self._check_workers()
        if kind == "init_error":  # a replacement worker could not start
            raise ExecutionError(payload)
        if kind == "outcome":
            self._current[wid] = None
            return payload
        return None  # "ready" from a replacement worker

    def _check_workers(self) -> Outcome | None:
        """A worker that died (killed, out of memory) loses only its current index: report it failed."""
        for wid, proc in self._procs.items():
            index = self._current[wid]
            if index is None or proc.is_alive():
                continue
            log.warning("worker %d died with exit code %s while training index %d", wid, proc.exitcode, index)
            self._current[wid] = None
            return Outcome(index, "failed", error=f"worker process died (exit code {proc.exitcode})")
        return None

    def close(self) -> None:
        if not self._procs:
            self.heartbeat.stop()
            return
        for inbox in self._inboxes.values():
            inbox.put(None)
        deadline = time.monotonic() + 30
        for proc in self._procs.values():
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def _worker_main(wid: int, task: SweepTask, threads: int, inbox, results) -> None:
    """A local worker process: load the data once, then train the indices it is given until told to stop."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # never log into the run of an enclosing `mlflow run`
    try:
        runner, heartbeat = make_runner(task, threads)
    except Exception as exc:
        results.put(("init_error", wid, f"a sweep worker could not start: {one_line(exc)}"))
        return
    results.put(("ready", wid, os.getpid()))
    while (index := inbox.get()) is not None:
        results.put(("outcome", wid, attempt_index(runner, task, index, heartbeat)))
    heartbeat.stop()


def check_executor(executor: str, workers: int = 1) -> None:
    """Refuse a bad executor choice before anything is recorded."""
    if executor not in EXECUTORS:
        raise ExecutionError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ExecutionError(f"--workers must be a positive integer, got {workers}; use 1 to train in "
                             "this process")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ExecutionError(RAY_MISSING) from None


def make_executor(task: SweepTask, executor: str = "local", workers: int = 1, ray_address: str | None = None,
                  ray_cpus: float = 1.0, ray_gpus: float = 0.0):
    check_executor(executor, workers)
    if executor == "ray":
        from .ray_executor import RayExecutor
        return RayExecutor(task, ray_address, ray_cpus, ray_gpus)
    return LocalExecutor(task, workers)


def drive(executor, indices: list[int], n_total: int, n_done: int, progress=True, desc="sweep") -> list[Outcome]:
    """Run every index to an end (trained, done elsewhere, or failed); returns those outcomes.

    An index another live process holds is checked again later, with a growing random delay,
    until it is FINISHED there or free to train here.
    """
    todo, waiting = deque(indices), []  # waiting: heap of (monotonic time to retry, index)
    waits: dict[int, float] = {}
    outcomes, in_flight = [], 0
    bar = tqdm(total=n_total, initial=n_done, disable=not progress, desc=desc, unit="run", dynamic_ncols=True)
    counts = {"trained": 0, "done": 0, "failed": 0}  # done: FINISHED by another process meanwhile
    try:
        while todo or waiting or in_flight:
            now = time.monotonic()
            while waiting and waiting[0][0] <= now:
                todo.append(heapq.heappop(waiting)[1])
            while todo and in_flight < executor.capacity:
                executor.submit(todo.popleft())
                in_flight += 1
            if not in_flight:
                time.sleep(max(0.0, waiting[0][0] - now))
                continue
            outcome = executor.poll(timeout=1.0)
            if outcome is None:
                continue
            in_flight -= 1
            if outcome.status == "busy":
                wait = min(BUSY_RETRY_S[1], 2 * waits.get(outcome.index, BUSY_RETRY_S[0] / 2))
                waits[outcome.index] = wait
                heapq.heappush(waiting, (time.monotonic() + wait * random.uniform(0.7, 1.3), outcome.index))
                bar.set_postfix(counts, waiting=len(waiting), refresh=True)
                continue
            outcomes.append(outcome)
            counts[outcome.status] += 1
            bar.update(1)
            bar.set_postfix(counts, waiting=len(waiting), refresh=True)
    finally:
        bar.close()
    return outcomes
