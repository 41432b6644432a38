"""Where models train: the executors by name (:data:`EXECUTORS`) and the settings that choose one.

Light on purpose (no Ray, no torch): the command line reads these fields when it starts. An
executor is a class with ``from_settings(job, settings, n_packs)``, ``capacity``, ``submit(pack)`` (a
tuple of tasks), ``poll(timeout) -> list[Outcome] | None`` (one outcome per task of a finished pack)
and ``close()``, that runs :func:`transfer_core.execute.tasks.attempt_pack` where the work should
happen. To add one: write the class, and one line in :data:`EXECUTORS` (with the module it needs
installed, if any).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from transfer_core.config import ConfigError
from transfer_core.settings import Settings, setting


class ExecutionError(ConfigError):
    """An executor cannot start or keeps losing workers."""


AUTO = "auto"  # --pack auto: as many models per pack as fit in the device's memory (1 on a CPU)
RAY_MISSING = ("the ray executor needs Ray, which is not installed; run pip install 'transfer-core[ray]' "
               "or use --executor local")


@dataclass(frozen=True)
class ExecutorKind:
    """One way to run tasks: ``target`` is its class as ``module:Class`` (imported when used, so Ray loads only
    for the ray executor), made by ``Class.from_settings(job, settings, n_packs)``; ``needs`` names a module
    that must be installed (checked when the settings are made, before anything is recorded), ``missing``
    says how to get it."""

    target: str
    needs: str = ""
    missing: str = ""

    def make(self, job, settings: "ExecutorSettings", n_packs: int | None):
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name).from_settings(job, settings, n_packs)


EXECUTORS: dict[str, ExecutorKind] = {
    "local": ExecutorKind("transfer_core.execute.local:LocalExecutor"),  # worker processes on this machine
    "ray": ExecutorKind("transfer_core.execute.ray_cluster:RayExecutor", needs="ray", missing=RAY_MISSING),
}


def parse_pack(value) -> int | str:
    """``--pack``: a positive number of models, or ``auto``."""
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    try:
        number = int(text) if not isinstance(value, bool) else -1
    except ValueError:
        number = -1
    if number < 1:
        raise ExecutionError(f"--pack must be a positive number of models or auto, got {value!r}; use --pack 1 to "
                             "train each model alone, or --pack auto")
    return number


@dataclass(frozen=True)
class ExecutorSettings(Settings):
    """Where tasks train, and how many models at once; validated at construction."""

    executor: str = setting("local", "local (worker processes on this machine) or ray (one Ray task per pack; needs "
                                     "pip install 'transfer-core[ray]').", choices=lambda: tuple(EXECUTORS))
    workers: int = setting(1, "Local worker processes; each loads the data once and gets cores/workers torch threads "
                              "(1 trains in this process).", min=1)
    ray_address: str | None = setting(None, "Ray cluster to use, e.g. 10.0.0.5:6379 or auto. Unset: $RAY_ADDRESS if "
                                            "set, else a new local Ray instance.")
    ray_cpus_per_run: float = setting(1.0, "CPUs each Ray task (one pack) reserves.", above=0)
    ray_gpus_per_run: float = setting(0.0, "GPUs each Ray task (one pack) reserves; a fraction (0.25) lets several "
                                           "small packs share one card, 1 with --pack N trains N models on each GPU.",
                                      min=0)
    pack: int | str = setting(AUTO, "Models trained at once as one network on one device (grouped convolutions; each "
                                    "model keeps its own weights, batches and seed, and is its own run). auto: as many "
                                    "as fit in the GPU's free memory, and 1 on a CPU, where packing does not pay. A "
                                    "pack that cannot fit is refused with the largest that can.", parse=parse_pack)
    compile: bool = setting(False, "torch.compile packed training (once per process; for GPUs).")

    def check(self) -> None:
        kind = EXECUTORS[self.executor]
        if kind.needs:
            try:
                importlib.import_module(kind.needs)
            except ImportError:
                raise ExecutionError(kind.missing) from None


def check_executor(executor: str, workers: int = 1) -> None:
    """Refuse a bad executor choice before anything is recorded (as constructing the settings does)."""
    ExecutorSettings(executor=executor, workers=workers)
