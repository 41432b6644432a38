"""The Ray executor: each index of a sweep is one Ray task with its CPU and (fractional) GPU share.

Ray is an optional extra (``pip install 'transfer-core[ray]'``); this module imports it only
when an executor is made. Tasks run :func:`transfer_core.execution.attempt_index`, so they
claim their index through the tracking store like local workers do.
"""
from __future__ import annotations

import os

from .execution import RAY_MISSING, ExecutionError, Outcome, SweepTask, attempt_index, make_runner, one_line

_RAY_RUNNERS: dict = {}  # per Ray worker process: data loaded once, reused by later tasks


def _ray_attempt(task: SweepTask, index: int, threads: int) -> Outcome:
    os.environ.pop("MLFLOW_RUN_ID", None)  # a local Ray started under `mlflow run` passes it on
    if task not in _RAY_RUNNERS:
        _RAY_RUNNERS.clear()
        _RAY_RUNNERS[task] = make_runner(task, threads)
    runner, heartbeat = _RAY_RUNNERS[task]
    return attempt_index(runner, task, index, heartbeat)


class RayExecutor:
    """Each index is one Ray task with ``cpus`` CPUs and ``gpus`` (possibly fractional) GPUs."""

    def __init__(self, task: SweepTask, address: str | None, cpus: float = 1.0, gpus: float = 0.0):
        try:
            import ray
        except ImportError:
            raise ExecutionError(RAY_MISSING) from None
        if cpus <= 0 or gpus < 0:
            raise ExecutionError(f"Ray resources per run must be positive CPUs and >= 0 GPUs, got "
                                 f"{cpus} CPUs and {gpus} GPUs")
        self.ray, self.task = ray, task
        self._started = not ray.is_initialized()
        if self._started:
            try:
                ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ExecutionError(f"cannot connect to Ray at {address or 'a new local instance'} "
                                     f"({one_line(exc)}); start it with `ray start --head` or fix "
                                     "--ray-address") from None
        resources = ray.cluster_resources()
        fit = resources.get("CPU", 1) // cpus
        if gpus > 0:
            fit = min(fit, resources.get("GPU", 0) // gpus)
            if fit < 1:
                raise ExecutionError(f"the Ray cluster has no GPU to give {gpus} GPU per run; "
                                     "set --ray-gpus-per-run 0 or add GPU nodes")
        self.capacity = max(2, int(2 * fit))  # keep every slot busy, plus a queue for autoscaling
        self._remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=1)(_ray_attempt)
        self._threads = max(1, int(cpus))
        self._refs: dict = {}

    def submit(self, index: int) -> None:
        self._refs[self._remote.remote(self.task, index, self._threads)] = index

    def poll(self, timeout: float) -> Outcome | None:
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if not ready:
            return None
        index = self._refs.pop(ready[0])
        try:
            return self.ray.get(ready[0])
        except Exception as exc:  # the task's worker crashed; its claim goes stale and is retried later
            return Outcome(index, "failed", error=f"Ray task failed: {one_line(exc)}")

    def close(self) -> None:
        for ref in self._refs:
            self.ray.cancel(ref, force=True)
        if self._started:
            self.ray.shutdown()
