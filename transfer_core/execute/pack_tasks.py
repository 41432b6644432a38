"""Packs: N claimed models trained at once on one device, each logged as its own run.

:func:`resolve_pack` turns ``--pack N|auto`` into a number before anything is recorded: on
the CPU ``auto`` is 1 (packing does not pay there; docs/scaling.md, "Packed training"), on a GPU it
is the largest pack that fits in its free memory (:mod:`transfer_core.train.memory`), and an
explicit N that does not fit is refused with the largest that does. :func:`train_pack`
trains the tasks one worker claimed (:func:`transfer_core.execute.tasks.attempt_pack`) with
:func:`transfer_core.train.run_pack` and logs each model exactly as
:meth:`SubsetRunner.run <transfer_core.execute.subset_runner.SubsetRunner.run>` does, so packed and
unpacked runs cannot be told apart (but for the tag ``pack_size``).
"""
from __future__ import annotations

import logging
import weakref

import numpy as np

from transfer_core.config import RunConfig
from transfer_core.data import DataDirs, DataError, check_mask, load_source, load_transfer_data, run_seed
from transfer_core.track import log_subset_result, mark_failed, one_line, run_scope, set_tags
from transfer_core.train import DeviceData, pack_budget, pick_device, run_pack

log = logging.getLogger(__name__)
PACK_SIZE_TAG = "pack_size"  # how many models trained together with this one (provenance only)
_DEVICE_DATA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # runner -> its DeviceData, once per process


def resolve_pack(config: RunConfig, settings, dirs: DataDirs = DataDirs()) -> int:
    """Models per pack for ``settings.pack`` (an :class:`~transfer_core.execute.ExecutorSettings`) on this
    machine's device; refuses a pack that does not fit.

    Local workers share the device, so each gets ``1 / workers`` of its memory. Ray tasks run
    elsewhere: an explicit N is checked by each Ray task against its own GPU, and ``auto``
    sizes packs on this machine's GPU (1 when it has none).
    """
    if settings.pack == 1:
        return 1
    device = pick_device()
    if device.type == "cpu":
        if settings.pack == "auto":
            if settings.executor == "ray":
                log.warning("--pack auto sizes packs on this machine's device, a CPU: one model per Ray task; "
                            "give --pack N to pack N models on each GPU of the cluster")
            return 1
        if settings.executor == "ray":
            return int(settings.pack)
    data = load_transfer_data(config.data, dirs)
    try:
        n_source_test = len(load_source(config.data, "test", dirs))
    except DataError:
        n_source_test = 0
    workers = settings.workers if settings.executor == "local" else 1
    budget = pack_budget(config, data, device, workers, n_source_test)
    if settings.pack == "auto":
        log.info("--pack auto: %d models per pack on %s (%.0f MiB each)", budget.auto(), device,
                 budget.per_model / 2 ** 20)
        return budget.auto()
    budget.check(int(settings.pack))
    return int(settings.pack)


def device_data(runner) -> DeviceData:
    """The runner's data on its device, made on first use and kept for its later packs."""
    if runner not in _DEVICE_DATA:
        _DEVICE_DATA[runner] = DeviceData(runner.data, runner.device, runner.source_test)
    return _DEVICE_DATA[runner]


def train_pack(runner, job, claimed: list[tuple]) -> list[str | None]:
    """Train the claimed ``(task, run_id, tags)`` of a :class:`~transfer_core.execute.Job` together, each its own run.

    Every run gets what :meth:`SubsetRunner.run` logs (params, metrics, mask, outputs,
    checkpoint) and ends FINISHED, or FAILED with the reason: a model that diverged fails
    alone, an error of the whole pack (out of memory) fails all of them. Returns, per task,
    None or the one-line error.
    """
    client, config = runner.client, runner.config
    indices = [task.index for task, _, _ in claimed]
    masks = [runner.mask_for(task.index) if task.mask is None else
             check_mask(np.array(task.mask, dtype=bool), runner.data.source.n_classes) for task, _, _ in claimed]
    seeds = [run_seed(config.sweep_seed, i) for i in indices]
    for (task, run_id, tags) in claimed:
        set_tags(client, run_id, {**runner.run_tags(task.index), **tags, PACK_SIZE_TAG: len(claimed)})
    try:
        results = run_pack(config, runner.data, masks, seeds, runner.source_test, runner.device, device_data(runner),
                           compile=job.compile)
    except Exception as exc:  # the whole pack failed; every run of it fails with the reason
        log.warning("a pack of %d models failed: %s", len(claimed), one_line(exc))
        results = [exc] * len(claimed)
    errors = []
    for (task, run_id, _), index, seed, mask, result in zip(claimed, indices, seeds, masks, results):
        if isinstance(result, BaseException):
            mark_failed(client, run_id, result)
            errors.append(one_line(result))
            continue
        try:
            with run_scope(client, run_id):
                log_subset_result(client, run_id, config, result, index, seed, runner.data, job.log_checkpoint,
                                  runner.datasets.inputs(mask), dict(task.params))
        except Exception as exc:  # run_scope has marked the run FAILED; the next command retries it
            log.warning("%s failed: %s", task.name, one_line(exc))
            errors.append(one_line(exc))
            continue
        errors.append(None)
    return errors
