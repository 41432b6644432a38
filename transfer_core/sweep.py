"""Sweeps: many subset runs of one config, resumable, parallel and distributed.

A sweep is one parent MLflow run (tags ``transfer_core.kind=sweep``, ``sweep_id``) and one
child run per model index (``transfer_core.kind=subset_run``, ``sweep_id``, ``index``). The
sweep id is a hash of the config (``alpha`` and ``sweep_seed`` included, the number of
models not), so the same command always means the same sweep and ``--n-models`` can grow
it. Starting a sweep again trains only the indices that have no FINISHED run.

Example::

    sweep_id = run_sweep(build_config("synthetic"), n_models=8, workers=2)
    runs = collect_sweep(sweep_id)     # transfer_core.collect
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from .claims import claim_tags, is_live, is_superseded, supersede
from .collect import check_sweep_id, finished_runs, search_all
from .config import ConfigError, RunConfig
from .execution import SweepTask, check_executor, drive, make_executor
from .tracking import KIND_TAG, TrackingError, get_experiment_id, setup_tracking

log = logging.getLogger(__name__)

CONFIG_TAG = "sweep_config"  # JSON of the params that define the sweep, written with the parent
ESTABLISHED_TAG = "sweep_established"  # the parent won its creation race
PARENT_POINTER_TAG = "sweep_parent_run_id"  # on an `mlflow run` run whose sweep already had a parent
PARENT_TRIES = 30


class SweepConflictError(ConfigError):
    """A stored sweep with the same id was made with a different config."""


@dataclass
class SweepSummary:
    """What a sweep command did; also logged on the parent run (metrics, ``sweep_summary.json``)."""

    sweep_id: str
    parent_run_id: str
    experiment_id: str
    n_models: int
    n_finished: int  # indices < n_models with a FINISHED run, after this command
    n_reused: int  # of those, FINISHED before this command started
    n_trained: int  # trained by this command
    n_failed: int  # failed in this command (retried by the next one)
    run_wall_median_s: float  # over every FINISHED run of the sweep (end - start)
    run_wall_p90_s: float
    total_wall_s: float  # this command, start to end
    failures: list[dict] = field(default_factory=list)  # {"index", "run_id", "error"}

    @property
    def complete(self) -> bool:
        return self.n_finished == self.n_models


def sweep_params(config: RunConfig, extra_params: dict | None = None) -> dict[str, str]:
    """The params that define a sweep: every config field plus ``extra_params``."""
    params = config.to_params()
    for key, value in (extra_params or {}).items():
        if key in params:
            raise ConfigError(f"extra sweep param {key!r} clashes with a config field; rename it")
        params[key] = str(value)
    return params


def sweep_id_for(config: RunConfig, extra_params: dict | None = None) -> str:
    """``sweep-<12 hex>`` from the config (alpha and sweep_seed included; n_models is not)."""
    if not extra_params:
        return f"sweep-{config.config_hash()}"
    blob = json.dumps(sweep_params(config, extra_params), sort_keys=True).encode()
    return f"sweep-{hashlib.sha256(blob).hexdigest()[:12]}"


def sweep_filter(sweep_id: str) -> str:
    return f"tags.`{KIND_TAG}` = 'sweep' and tags.sweep_id = '{check_sweep_id(sweep_id)}'"


def find_sweeps(experiment_id: str) -> list[str]:
    """Sweep ids of an experiment, newest first."""
    runs = search_all(MlflowClient(), [experiment_id], f"tags.`{KIND_TAG}` = 'sweep'",
                      order_by=["attributes.start_time DESC"])
    ids = [r.data.tags["sweep_id"] for r in runs if not is_superseded(r) and "sweep_id" in r.data.tags]
    return list(dict.fromkeys(ids))


def check_conflict(parent, sweep_id: str, params: dict[str, str]) -> None:
    """Refuse to add runs of ``params`` to a stored sweep made with other params, naming the fields."""
    stored = json.loads(parent.data.tags.get(CONFIG_TAG) or "null") or dict(parent.data.params)
    differ = [k for k in sorted(set(stored) | set(params)) if stored.get(k) != params.get(k)]
    if differ:
        shown = "; ".join(f"{k} is {stored.get(k, '(unset)')} there but {params.get(k, '(unset)')} here"
                          for k in differ[:6])
        more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
        raise SweepConflictError(f"sweep {sweep_id} (parent run {parent.info.run_id}) was started with a "
                                 f"different config: {shown}{more}; rerun with its settings or choose "
                                 "another --sweep-id")


def resolve_parent(client: MlflowClient, experiment_id: str, sweep_id: str, params: dict[str, str],
                   invocation_run_id: str | None = None) -> str:
    """The parent run of the sweep: the stored one (checked against ``params``), else a new one.

    Creation is a claim (see :mod:`transfer_core.claims`): a candidate parent is written,
    and it becomes the parent only if no other candidate is live; so two commands started at
    once agree on one parent. ``invocation_run_id`` (the run of an enclosing ``mlflow run``)
    becomes the parent when the sweep has none yet; else it gets a tag pointing to the parent.
    """
    use_invocation = (invocation_run_id is not None
                      and client.get_run(invocation_run_id).info.experiment_id == experiment_id)
    parent = _settle_parent(client, experiment_id, sweep_id, params, invocation_run_id if use_invocation else None)
    if invocation_run_id and invocation_run_id != parent:
        client.log_batch(invocation_run_id, tags=[RunTag("sweep_id", sweep_id), RunTag(PARENT_POINTER_TAG, parent)])
    return parent


def _settle_parent(client, experiment_id, sweep_id, params, invocation_run_id) -> str:
    for _ in range(PARENT_TRIES):
        parents = [r for r in client.search_runs([experiment_id], sweep_filter(sweep_id),
                                                 order_by=["attributes.start_time ASC"])
                   if not is_superseded(r)]
        settled = [r for r in parents if r.data.tags.get(ESTABLISHED_TAG) == "true"]
        if settled:
            check_conflict(settled[0], sweep_id, params)
            return settled[0].info.run_id
        if not any(is_live(r) for r in parents):
            own = _write_candidate(client, experiment_id, sweep_id, params, invocation_run_id)
            rivals = [r for r in client.search_runs([experiment_id], sweep_filter(sweep_id))
                      if r.info.run_id != own and not is_superseded(r)]
            if not any(is_live(r) or r.data.tags.get(ESTABLISHED_TAG) == "true" for r in rivals):
                for rival in rivals:  # candidates of commands that died before settling
                    supersede(client, rival, own)
                _log_params(client, own, params)
                client.set_tag(own, ESTABLISHED_TAG, "true")
                return own
            client.set_tag(own, "superseded", "true")
            if own != invocation_run_id:
                client.set_terminated(own, status="KILLED")
        time.sleep(random.uniform(0.2, 1.5))
    raise TrackingError(f"could not settle on one parent run for sweep {sweep_id} after {PARENT_TRIES} "
                        "tries; other commands keep creating it, so wait for them and run again")


def _write_candidate(client, experiment_id, sweep_id, params, invocation_run_id) -> str:
    tags = {KIND_TAG: "sweep", "sweep_id": sweep_id, CONFIG_TAG: json.dumps(params, sort_keys=True),
            "superseded": "false", **claim_tags()}
    if invocation_run_id:
        client.log_batch(invocation_run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return invocation_run_id
    tags[MLFLOW_RUN_NAME] = sweep_id
    return client.create_run(experiment_id, tags=tags).info.run_id


def _log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Params for the UI; an `mlflow run` run already holds its entry point's params, kept as they are."""
    present = client.get_run(run_id).data.params
    items = [Param(k, v) for k, v in params.items() if k not in present]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def summarise(client, experiment_id, sweep_id, parent_run_id, n_models, n_reused, outcomes,
              started: float) -> SweepSummary:
    runs = [r for r in finished_runs(sweep_id, experiment_id, client) if int(r.data.tags["index"]) < n_models]
    walls = np.array([(r.info.end_time - r.info.start_time) / 1000 for r in runs if r.info.end_time] or [0.0])
    failures = [{"index": o.index, "run_id": o.run_id, "error": o.error} for o in outcomes if o.status == "failed"]
    return SweepSummary(sweep_id, parent_run_id, experiment_id, n_models, len(runs), n_reused,
                        sum(o.status == "trained" for o in outcomes), len(failures),
                        float(np.median(walls)), float(np.percentile(walls, 90)),
                        time.monotonic() - started, failures)


def log_summary(client: MlflowClient, summary: SweepSummary) -> None:
    now = int(time.time() * 1000)
    values = {k: v for k, v in asdict(summary).items() if isinstance(v, (int, float)) and k != "n_models"}
    previous = client.get_run(summary.parent_run_id).data.tags.get("n_models", "0")
    client.log_batch(summary.parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()],
                     tags=[RunTag("n_models", str(max(int(previous), summary.n_models)))])
    client.log_dict(summary.parent_run_id, asdict(summary), "sweep_summary.json")
    client.set_terminated(summary.parent_run_id, status="FINISHED" if summary.complete else "FAILED")


def sweep_with_summary(config: RunConfig, n_models: int, *, experiment: str = "transfer_core",
                       workers: int = 1, executor: str = "local", ray_address: str | None = None,
                       ray_cpus_per_run: float = 1.0, ray_gpus_per_run: float = 0.0, data_root=None,
                       tracking_uri: str | None = None, sweep_id: str | None = None,
                       extra_params: dict | None = None, log_checkpoint: bool = False,
                       invocation_run_id: str | None = None, progress: bool = True) -> SweepSummary:
    """Run (or resume, or grow) the sweep of ``config`` to ``n_models`` FINISHED runs."""
    started = time.monotonic()
    if n_models < 1:
        raise ConfigError(f"--n-models must be a positive integer, got {n_models}")
    check_executor(executor, workers)
    config = config.validate()
    params = sweep_params(config, extra_params)
    sweep_id = check_sweep_id(sweep_id) if sweep_id else sweep_id_for(config, extra_params)
    uri = setup_tracking(tracking_uri)
    client = MlflowClient()
    experiment_id = get_experiment_id(experiment)
    parent = resolve_parent(client, experiment_id, sweep_id, params, invocation_run_id)
    client.update_run(parent, status="RUNNING")
    done = {int(r.data.tags["index"]) for r in finished_runs(sweep_id, experiment_id, client)}
    todo = [i for i in range(n_models) if i not in done]
    n_reused = n_models - len(todo)
    log.info("sweep %s: parent run %s, %d of %d models already FINISHED", sweep_id, parent, n_reused, n_models)
    outcomes = []
    if todo:
        task = SweepTask(config, experiment, uri, sweep_id, parent, None if data_root is None else str(data_root),
                         log_checkpoint)
        runner = make_executor(task, executor, min(workers, len(todo)), ray_address, ray_cpus_per_run,
                               ray_gpus_per_run)
        try:
            outcomes = drive(runner, todo, n_models, n_reused, progress, desc=sweep_id)
        finally:
            runner.close()
    summary = summarise(client, experiment_id, sweep_id, parent, n_models, n_reused, outcomes, started)
    log_summary(client, summary)
    return summary


def run_sweep(config: RunConfig, n_models: int, *, extra_params: dict | None = None, **options) -> str:
    """Run, resume or grow a sweep (see :func:`sweep_with_summary` for options); returns its id.

    Raises ConfigError if some runs failed (they are retried by the next call).
    """
    summary = sweep_with_summary(config, n_models, extra_params=extra_params, **options)
    if not summary.complete:
        raise SweepIncomplete(summary)
    return summary.sweep_id


class SweepIncomplete(ConfigError):
    """Some runs of the sweep failed; rerunning the same sweep retries only those."""

    def __init__(self, summary: SweepSummary):
        first = summary.failures[0] if summary.failures else None
        detail = f" (first: index {first['index']}: {first['error']})" if first else ""
        super().__init__(f"sweep {summary.sweep_id}: {summary.n_finished} of {summary.n_models} runs FINISHED, "
                         f"{summary.n_failed} failed{detail}; run the same command again to retry the missing ones")
        self.summary = summary
