"""Where models train, as settings validated at construction (light: the command line reads their defaults)."""
from __future__ import annotations

from dataclasses import dataclass

from transfer_core.config import ConfigError


class ExecutionError(ConfigError):
    """An executor cannot start or keeps losing workers."""


EXECUTORS = ("local", "ray")
RAY_MISSING = ("the ray executor needs Ray, which is not installed; run pip install 'transfer-core[ray]' "
               "or use --executor local")
AUTO = "auto"  # --pack auto: as many models per pack as fit in the device's memory (1 on a CPU)


def check_pack(pack) -> None:
    if pack != AUTO and (isinstance(pack, bool) or not isinstance(pack, int) or pack < 1):
        raise ExecutionError(f"--pack must be a positive number of models or auto, got {pack!r}; use --pack 1 to "
                             "train each model alone, or --pack auto")


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


@dataclass(frozen=True)
class ExecutorSettings:
    """Where tasks train; validated at construction.

    ``local``: ``workers`` processes on this machine, each with ``cores // workers`` torch
    threads (one worker trains in this process). ``ray``: one Ray task per pack with
    ``ray_cpus_per_run`` CPUs and ``ray_gpus_per_run`` GPUs (a fraction lets packs share a
    card), on the cluster at ``ray_address`` (``$RAY_ADDRESS``, else a new local instance).
    ``pack``: models trained at once as one network, or ``"auto"`` (as many as fit in the
    device's memory on a GPU, 1 on a CPU; see :func:`transfer_core.execute.pack_tasks.resolve_pack`).
    ``compile``: ``torch.compile`` packed training, once per process.
    """

    executor: str = "local"
    workers: int = 1
    ray_address: str | None = None
    ray_cpus_per_run: float = 1.0
    ray_gpus_per_run: float = 0.0
    pack: int | str = AUTO
    compile: bool = False

    def __post_init__(self):
        check_executor(self.executor, self.workers)
        check_pack(self.pack)
        if self.ray_cpus_per_run <= 0 or self.ray_gpus_per_run < 0:
            raise ExecutionError(f"Ray resources per run must be positive CPUs and >= 0 GPUs, got "
                                 f"{self.ray_cpus_per_run} CPUs and {self.ray_gpus_per_run} GPUs")
