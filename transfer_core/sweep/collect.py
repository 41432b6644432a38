"""Fast collection of a sweep: the stacked class masks and per-example outputs of its runs.

One ``search_runs`` (paged) finds the FINISHED subset runs of the sweep; each run's mask and
outputs are then read straight from its ``artifact_uri`` (in place when local). What was
read is kept in one consolidated ``.npz`` per sweep under ``$TRANSFER_CORE_CACHE/sweeps``,
so a later call reads only the runs that finished since. Artifacts of a FINISHED run never
change, so the cache is keyed by run id and needs no invalidation.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from transfer_core.config import ConfigError
from transfer_core.data import DataDirs
from transfer_core.execute import Context
from transfer_core.track import (CLASSES_ARTIFACT, MASK_ARTIFACT, OUTPUTS_ARTIFACT, VAL_OUTPUTS_ARTIFACT, artifact_path,
                                 run_filter, search_all)
from transfer_core.track.claims import is_superseded
from transfer_core.track.runs import SUBSET_RUN, all_experiment_ids
from transfer_core.track.steps import step_key

OUTPUT_KEYS = ("margin", "prob", "correct")
READ_THREADS = 8  # artifact reads overlap well when they are downloads from a server


@dataclass
class CollectedRuns:
    """All FINISHED runs of one sweep, one row per model index, sorted by index."""

    run_ids: list[str]
    indices: np.ndarray  # (n_models,) int
    masks: np.ndarray  # (n_models, n_source_classes) bool: M[m, c] = model m was pretrained on class c
    outputs: dict[str, np.ndarray]  # margin, prob (float16), correct (bool): each (n_models, n_test)
    target_labels: np.ndarray  # (n_test,) int, test-set order
    source_classes: list[str]
    params: dict[str, str]  # params of the first run
    run_params: list[dict[str, str]]  # per run, for compatibility checks
    val_outputs: dict[str, np.ndarray] | None = None  # the same on the validation split (n_models, n_val)
    val_labels: np.ndarray | None = None  # (n_val,); None when the runs recorded no validation outputs

    def __len__(self) -> int:
        return len(self.run_ids)


def check_sweep_id(sweep_id: str) -> str:
    """Sweep ids go into filter strings, so only ``[A-Za-z0-9_.-]`` is allowed."""
    if not sweep_id or not all(ch.isalnum() or ch in "_.-" for ch in sweep_id):
        raise ConfigError(f"invalid sweep id {sweep_id!r}; use letters, digits, '_', '.' and '-' only")
    return sweep_id


def finished_filter(sweep_id: str) -> str:
    return run_filter(SUBSET_RUN, "FINISHED", sweep_id=check_sweep_id(sweep_id))


def finished_runs(sweep_id: str, experiment_id: str | None, client: MlflowClient) -> list:
    """The FINISHED subset runs of a sweep, one per index (the earliest to finish), by index.

    With ``experiment_id`` None every experiment is searched, and a sweep id found in more
    than one is refused (pass the experiment).
    """
    experiment_ids = [experiment_id] if experiment_id is not None else all_experiment_ids(client)
    runs = search_all(client, experiment_ids, finished_filter(sweep_id))
    found_in = sorted({r.info.experiment_id for r in runs})
    if len(found_in) > 1:
        raise ConfigError(f"sweep {sweep_id} has runs in experiments {', '.join(found_in)}; "
                          "pass the experiment id to choose one")
    best: dict[int, object] = {}
    for run in runs:
        index = int(run.data.tags["index"])
        key = (is_superseded(run), run.info.end_time or 0, run.info.run_id)
        if index not in best or key < (is_superseded(best[index]), best[index].info.end_time or 0,
                                       best[index].info.run_id):
            best[index] = run
    return [best[i] for i in sorted(best)]


def cache_file(dirs: DataDirs, tracking_uri: str, sweep_id: str, experiment_ids: set[str]) -> Path:
    """One cache per (tracking store, experiment, sweep) under ``<cache>/sweeps``: sweep ids are unique only
    within a store."""
    folder = dirs.cache_path("sweeps")
    key = step_key("collect", upstream={"store": tracking_uri, "experiments": sorted(experiment_ids)})
    return folder / f"{sweep_id}-{key[:10]}.npz"


def read_run(run, client: MlflowClient | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The mask ``(n_source_classes,)`` and outputs of one run: test ``margin``, ``prob``, ``correct``,
    ``labels``, and, when the run recorded them, validation ``val_margin``, ... ``val_labels``."""
    mask = np.load(artifact_path(run, MASK_ARTIFACT, client)).astype(bool)
    with np.load(artifact_path(run, OUTPUTS_ARTIFACT, client)) as npz:
        outputs = {k: npz[k] for k in (*OUTPUT_KEYS, "labels")}
    val_path = artifact_path(run, VAL_OUTPUTS_ARTIFACT, client)
    if val_path.is_file():
        with np.load(val_path) as npz:
            outputs.update({f"val_{k}": npz[k] for k in (*OUTPUT_KEYS, "labels")})
    return mask, outputs


def _load_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError):  # a torn or foreign file: rebuild it
        return None


def _save_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new cache, never half


def _read_runs(runs: list, sweep_id: str, progress: bool, client: MlflowClient) -> dict[str, tuple]:
    with ThreadPoolExecutor(READ_THREADS) as pool:
        reads = list(tqdm(pool.map(lambda run: read_run(run, client), runs), total=len(runs),
                          disable=not progress or not runs,
                          desc=f"collect {sweep_id}", unit="run"))
    return dict(zip([r.info.run_id for r in runs], reads))


def _layout(mask: np.ndarray, outputs: dict[str, np.ndarray]) -> tuple:
    """What every run of a sweep must share: class count, test labels, validation labels (or None)."""
    val = outputs.get("val_labels")
    return len(mask), outputs["labels"].tolist(), None if val is None else val.tolist()


def _cache_layout(cache: dict[str, np.ndarray]) -> tuple:
    val = cache.get("val_labels")
    return cache["masks"].shape[1], cache["target_labels"].tolist(), None if val is None else val.tolist()


def collect_sweep(sweep_id: str, experiment_id: str | None = None, use_cache=True, *, ctx: Context) -> CollectedRuns:
    """Masks and per-example outputs of every FINISHED run of ``sweep_id``, stacked by index.

    ``ctx``: the store, the cache folder (``<cache>/sweeps``) and whether to show progress.
    Reads only runs missing from the sweep's cache (all of them with ``use_cache=False``).
    Raises ConfigError when the sweep has no FINISHED run or its runs disagree in shape.
    """
    tracking_uri, progress = ctx.tracking_uri, ctx.progress
    client = ctx.client
    runs = finished_runs(sweep_id, experiment_id, client)
    if not runs:
        where = f"experiment {experiment_id}" if experiment_id is not None else "any experiment"
        raise ConfigError(f"sweep {sweep_id} has no FINISHED subset run in {where}; run `transfer-core sweep` "
                          "first, or check the id with `transfer-core sweeps`")
    run_ids = [r.info.run_id for r in runs]
    path = cache_file(ctx.dirs, tracking_uri, sweep_id, {r.info.experiment_id for r in runs})
    cache = _load_cache(path) if use_cache else None
    if cache is not None and "masks" not in cache:
        cache = None
    cached_rows = {} if cache is None else {rid: row for row, rid in enumerate(cache["run_ids"].tolist())}
    fresh = _read_runs([r for r in runs if r.info.run_id not in cached_rows], sweep_id, progress, client)
    layout = _layout(*next(iter(fresh.values()))) if fresh else _cache_layout(cache)
    if cache is not None and fresh and _cache_layout(cache) != layout:
        cache, cached_rows = None, {}  # written by other code, or before runs recorded validation: read anew
        fresh.update(_read_runs([r for r in runs if r.info.run_id not in fresh], sweep_id, progress, client))
    n_classes, labels, val_labels = layout
    keys = [*OUTPUT_KEYS, *([f"val_{k}" for k in OUTPUT_KEYS] if val_labels is not None else [])]
    n = len(runs)
    arrays = {"masks": np.zeros((n, n_classes), dtype=bool)}
    for key in keys:
        width = len(val_labels) if key.startswith("val_") else len(labels)
        arrays[key] = np.zeros((n, width), bool if key.endswith("correct") else np.float16)
    from_cache = [(row, cached_rows[run_id]) for row, run_id in enumerate(run_ids) if run_id not in fresh]
    if from_cache:
        rows, src = (np.array(a) for a in zip(*from_cache))
        for key in arrays:
            arrays[key][rows] = cache[key][src]
    for row, run_id in enumerate(run_ids):
        if run_id not in fresh:
            continue
        mask, out = fresh[run_id]
        if _layout(mask, out) != layout:
            raise ConfigError(f"run {run_id} of sweep {sweep_id} has {len(mask)} source classes, "
                              f"{len(out['labels'])} test labels and "
                              f"{'no' if 'val_labels' not in out else len(out['val_labels'])} validation labels, "
                              "unlike the sweep's other runs; delete it in the MLflow UI or start a new sweep")
        arrays["masks"][row] = mask
        for key in keys:
            arrays[key][row] = out[key]

    if cache is not None and not fresh and "source_classes" in cache:
        source_classes = cache["source_classes"].tolist()
    else:
        source_classes = json.loads(Path(artifact_path(runs[0], CLASSES_ARTIFACT, client)).read_text())
    indices = np.array([int(r.data.tags["index"]) for r in runs], dtype=np.int64)
    if use_cache and (fresh or len(cached_rows) != n):
        extra = {} if val_labels is None else {"val_labels": np.asarray(val_labels)}
        _save_cache(path, {"run_ids": np.array(run_ids), "indices": indices, "target_labels": np.asarray(labels),
                           "source_classes": np.array(source_classes), **extra, **arrays})
    run_params = [dict(r.data.params) for r in runs]
    val = None if val_labels is None else {k: arrays[f"val_{k}"] for k in OUTPUT_KEYS}
    return CollectedRuns(run_ids, indices, arrays["masks"], {k: arrays[k] for k in OUTPUT_KEYS},
                         np.asarray(labels).astype(np.int64), source_classes, run_params[0], run_params,
                         val, None if val_labels is None else np.asarray(val_labels).astype(np.int64))
