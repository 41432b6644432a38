"""The local executor: worker processes on this machine, or this process when there is one worker.

Each worker is a spawned process that loads the data once and trains the packs of tasks it
is sent, with ``cores // workers`` torch threads so that workers do not oversubscribe the
cores. Each worker has its own inbox, so the pack of a worker that dies is known: its tasks
are reported failed (their claims go stale and the next command retrains them), and the
worker is replaced only when there is more work.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import time
from collections import deque

from transfer_core.execute.settings import ExecutionError
from transfer_core.execute.tasks import Job, Outcome, Task, attempt_pack, make_runner, one_line, \
    threads_per_worker

log = logging.getLogger(__name__)
START_TIMEOUT_S = 5.0  # how often a starting pool checks for a worker that died


class LocalExecutor:
    """``workers`` processes on this machine; with one worker, everything runs in this process."""

    @classmethod
    def from_settings(cls, job: Job, settings, n_packs: int | None = None) -> "LocalExecutor":
        """``settings.workers`` processes, but no more than there are packs to train."""
        return cls(job, min(settings.workers, n_packs or settings.workers))

    def __init__(self, job: Job, workers: int):
        self.job, self.capacity = job, workers
        self.threads = threads_per_worker(workers)
        self._inline: deque[tuple[Task, ...]] = deque()
        self._procs: dict[int, mp.Process] = {}
        self._inboxes: dict[int, object] = {}
        self._current: dict[int, tuple[Task, ...] | None] = {}  # the pack each worker trains, None when idle
        self._restarts = 0
        if workers == 1:
            self.runner, self.heartbeat = make_runner(job, self.threads)
            return
        self._ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch or sqlite state
        self._results = self._ctx.Queue()
        for wid in range(workers):
            self._start_worker(wid)
        self._await_ready(workers)

    def _start_worker(self, wid: int) -> None:
        inbox = self._ctx.Queue()
        proc = self._ctx.Process(target=_worker_main, name=f"transfer-core-worker-{wid}",
                                 args=(wid, self.job, self.threads, inbox, self._results))
        proc.start()
        self._procs[wid], self._inboxes[wid], self._current[wid] = proc, inbox, None

    def _await_ready(self, n: int) -> None:
        """Wait until every worker has loaded its data, so a bad config stops before any claim."""
        ready = 0
        while ready < n:
            try:
                kind, wid, payload = self._results.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                dead = [p for p in self._procs.values() if not p.is_alive()]
                if dead:
                    self.close()
                    raise ExecutionError(f"a worker process exited while starting (exit code {dead[0].exitcode}); "
                                         "run with --workers 1 to see why") from None
                continue
            if kind == "init_error":
                self.close()
                raise ExecutionError(payload)
            ready += kind == "ready"

    def submit(self, pack: tuple[Task, ...]) -> None:
        if not self._procs:
            self._inline.append(pack)
            return
        idle = [w for w, current in self._current.items() if current is None]
        wid = next((w for w in idle if self._procs[w].is_alive()), idle[0])
        if not self._procs[wid].is_alive():  # replace a dead worker only when there is work for it
            self._restarts += 1
            if self._restarts > 2 * self.capacity:
                raise ExecutionError(f"worker processes keep dying (last exit code {self._procs[wid].exitcode}); "
                                     "check memory use, or lower --workers")
            self._start_worker(wid)
        self._current[wid] = pack
        self._inboxes[wid].put(pack)

    def poll(self, timeout: float) -> list[Outcome] | None:
        """The outcomes of one finished pack, or None when none finished within ``timeout``."""
        if not self._procs:
            return attempt_pack(self.runner, self.job, self._inline.popleft(), self.heartbeat)
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

    def _check_workers(self) -> list[Outcome] | None:
        """A worker that died (killed, out of memory) loses only its current pack: report its tasks failed."""
        for wid, proc in self._procs.items():
            pack = self._current[wid]
            if pack is None or proc.is_alive():
                continue
            log.warning("worker %d died with exit code %s while training %s", wid, proc.exitcode,
                        ", ".join(task.name for task in pack))
            self._current[wid] = None
            return [Outcome(task, "failed", error=f"worker process died (exit code {proc.exitcode})") for task in pack]
        return None

    def close(self) -> None:
        """Stop the workers. Each has reported its last outcome (or lost it, dying), so once it has said
        goodbye it is ended without waiting for its interpreter's teardown (about 1.4 s of torch and mlflow)."""
        if not self._procs:
            self.heartbeat.stop()
            return
        for inbox in self._inboxes.values():
            inbox.put(None)
        deadline = time.monotonic() + 30
        waiting = {wid for wid, proc in self._procs.items() if proc.is_alive()}
        while waiting and time.monotonic() < deadline:
            try:
                kind, wid, _ = self._results.get(timeout=0.5)
            except queue.Empty:
                waiting = {wid for wid in waiting if self._procs[wid].is_alive()}
                continue
            if kind == "stopped":
                waiting.discard(wid)
        for proc in self._procs.values():
            if proc.is_alive():
                proc.terminate()
            proc.join(5)


def _worker_main(wid: int, job: Job, threads: int, inbox, results) -> None:
    """A worker process: load the data once, then train the packs it is sent until told to stop."""
    try:
        runner, heartbeat = make_runner(job, threads)
    except Exception as exc:  # reported to the parent, which stops with this sentence
        results.put(("init_error", wid, f"a worker process could not start: {one_line(exc)}"))
        return
    results.put(("ready", wid, os.getpid()))
    while (pack := inbox.get()) is not None:
        results.put(("outcome", wid, attempt_pack(runner, job, pack, heartbeat)))
    heartbeat.stop()
    results.put(("stopped", wid, None))
    results.close()
    results.join_thread()  # every message is in the pipe: the parent may end this process now
