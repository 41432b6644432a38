"""The Ray executor: each pack of tasks (sweep models, grid points) is one Ray task with its CPU and GPU share.

Ray is an optional extra (``pip install 'transfer-core[ray]'``); this module imports it only
when an executor is made. Ray tasks run :func:`transfer_core.execute.tasks.attempt_pack`, so
they claim their work through the tracking store like local workers do. With ``--pack N``
and ``--ray-gpus-per-run 1``, one Ray task trains N models on one GPU.
"""
from __future__ import annotations

import os

from transfer_core.execute.settings import RAY_MISSING, ExecutionError, ExecutorSettings
from transfer_core.execute.tasks import Job, Outcome, Task, attempt_pack, make_runner, one_line
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_RAY_RUNNERS: dict = {}  # per Ray worker process: data loaded once, reused by later tasks of the same job


def _ray_attempt(job: Job, pack: tuple[Task, ...], threads: int) -> list[Outcome]:
    if job not in _RAY_RUNNERS:
        _RAY_RUNNERS.clear()
        runner, heartbeat = make_runner(job, threads)
        if job.pack > 1:  # this task's own device: refuse a pack that cannot fit before claiming anything
            from transfer_core.train import pack_budget
            n_source_test = 0 if runner.source_test is None else len(runner.source_test)
            pack_budget(job.config, runner.data, runner.device, n_source_test=n_source_test).check(job.pack)
        _RAY_RUNNERS[job] = runner, heartbeat
    runner, heartbeat = _RAY_RUNNERS[job]
    return attempt_pack(runner, job, pack, heartbeat)


def credentials_env() -> dict | None:
    """A runtime env carrying the tracking server's credentials to every Ray worker, when they are set.

    Local worker processes inherit them; Ray workers on other nodes run under ``ray start``'s
    environment, so they get the driver's ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.
    """
    env = {k: os.environ[k] for k in CREDENTIAL_VARS if os.environ.get(k)}
    return {"env_vars": env} if env else None


class RayExecutor:
    """Each pack of tasks is one Ray task with ``cpus`` CPUs and ``gpus`` (possibly fractional) GPUs."""

    @classmethod
    def from_settings(cls, job: Job, settings: ExecutorSettings, n_packs: int | None = None) -> "RayExecutor":
        return cls(job, settings)

    def __init__(self, job: Job, settings: ExecutorSettings):
        address, cpus, gpus = settings.ray_address, settings.ray_cpus_per_run, settings.ray_gpus_per_run
        try:
            import ray
        except ImportError:
            raise ExecutionError(RAY_MISSING) from None
        self.ray, self.job = ray, job
        self._started = not ray.is_initialized()
        if self._started:
            try:
                ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                         runtime_env=credentials_env())
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

    def submit(self, pack: tuple[Task, ...]) -> None:
        self._refs[self._remote.remote(self.job, pack, self._threads)] = pack

    def poll(self, timeout: float) -> list[Outcome] | None:
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if not ready:
            return None
        pack = self._refs.pop(ready[0])
        try:
            return self.ray.get(ready[0])
        except Exception as exc:  # the task's worker crashed; its claims go stale and are retried later
            return [Outcome(task, "failed", error=f"Ray task failed: {one_line(exc)}") for task in pack]

    def close(self) -> None:
        for ref in self._refs:
            self.ray.cancel(ref, force=True)
        if self._started:
            self.ray.shutdown()
