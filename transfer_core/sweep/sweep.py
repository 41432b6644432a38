"""Sweeps: many subset runs of one config, resumable, parallel and distributed.

A sweep is one parent MLflow run (tags ``transfer_core.kind=sweep``, ``sweep_id``) and one
child run per model index (``transfer_core.kind=subset_run``, ``sweep_id``, ``index``). The
sweep id is its step key (:func:`transfer_core.track.steps.step_key`): the config (``alpha``
and ``sweep_seed`` included, the number of models not), the content digest of the data and
the digest of the code that trains the models. So the same command always means the same
sweep, ``--n-models`` can grow it, and a change to the training code makes a new one.
Starting a sweep again trains only the indices that have no FINISHED run.

Example::

    sweep_id = run_sweep(build_config("synthetic"), SweepSettings(n_models=8), ctx=ctx)
    runs = collect_sweep(sweep_id, ctx=ctx)     # transfer_core.sweep.collect

Models train through :mod:`transfer_core.execute`, which claims each index through the
tracking store, so several sweep commands (on one machine or many) never train an index twice.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from mlflow.tracking import MlflowClient

from transfer_core.config import ConfigError, Provenance, RunConfig
from transfer_core.sweep.settings import SweepSettings
from transfer_core.data import data_digest
from transfer_core.execute import Context, Job, Task, resolve_pack, run_tasks
from transfer_core.sweep.collect import check_sweep_id, finished_runs
from transfer_core.track import (DEFAULT_EXPERIMENT, describe_step, get_experiment_id, log_metrics, quote,
                                 run_filter, search_all)
from transfer_core.track.claims import is_superseded, settle_parent
from transfer_core.track.runs import SUBSET_RUN, SWEEP
from transfer_core.track.steps import STEP_KEY_TAG, step_key, step_tags

log = logging.getLogger(__name__)

CONFIG_TAG = "sweep_config"  # JSON of the params that define the sweep, written with the parent
TUNE_RUN_TAG = "tune_run_id"  # the tune run whose recipe the sweep trains with (provenance)
PROVENANCE_TAG = "config_provenance"  # where the config came from (config.Provenance), on every step run


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


def sweep_key(config: RunConfig, data: str, extra_params: dict | None = None) -> str:
    """The sweep's step key: config (alpha and sweep_seed included; n_models is not), data digest, training code."""
    return step_key("sweep", config=config, data=data, code="models", extra=dict(extra_params or {}))


def sweep_id_for(config: RunConfig, data: str, extra_params: dict | None = None) -> str:
    """``sweep-<12 hex>`` of :func:`sweep_key`; ``data`` is :func:`transfer_core.data.data_digest` of the config."""
    return f"sweep-{sweep_key(config, data, extra_params)[:12]}"


def find_sweeps(client: MlflowClient, experiment_id: str) -> list[str]:
    """Sweep ids of an experiment, newest first."""
    runs = search_all(client, [experiment_id], run_filter(SWEEP),
                      order_by=["attributes.start_time DESC"])
    ids = [r.data.tags["sweep_id"] for r in runs if not is_superseded(r) and "sweep_id" in r.data.tags]
    return list(dict.fromkeys(ids))


def check_conflict(parent, sweep_id: str, params: dict[str, str], key: str | None = None) -> None:
    """Refuse to add runs of ``params`` to a stored sweep made with other params (naming the fields), or,
    given the step ``key``, with other data or training code."""
    stored_key = parent.data.tags.get(STEP_KEY_TAG)
    if key is not None and stored_key is not None and stored_key != key and \
            json.loads(parent.data.tags.get(CONFIG_TAG) or "null") == params:
        raise SweepConflictError(f"sweep {sweep_id} (parent run {parent.info.run_id}) was trained on other data or "
                                 "by other training code than this command would use; choose another --sweep-id "
                                 "(or leave it out: the default id follows the data and the code)")
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
                   invocation_run_id: str | None = None, tags: dict[str, str] | None = None) -> str:
    """The parent run of the sweep: the stored one (checked against ``params`` and the step key in
    ``tags``), else a new one. Commands started together agree on one parent
    (see :func:`transfer_core.track.claims.settle_parent`).
    """
    tags = tags or {}
    return settle_parent(client, experiment_id, SWEEP, {"sweep_id": sweep_id}, params=params,
                         run_name=sweep_id, invocation_run_id=invocation_run_id,
                         extra_tags={CONFIG_TAG: json.dumps(params, sort_keys=True), **tags},
                         check=lambda parent: check_conflict(parent, sweep_id, params, tags.get(STEP_KEY_TAG)))


def model_name(sweep_id: str, index: int) -> str:
    """A sweep model's run name, the part that tells runs apart first: ``00039 · sweep-dc25``."""
    return f"{index:05d} · {sweep_id[:10]}"


def sweep_tasks(sweep_id: str, parent_run_id: str, indices: list[int]) -> list[Task]:
    """One task per model index: the kept classes and the seed follow from (sweep seed, index)."""
    return [Task(SUBSET_RUN, (("sweep_id", sweep_id), ("index", str(i))), i, model_name(sweep_id, i), parent_run_id)
            for i in indices]


def summarise(client, experiment_id, sweep_id, parent_run_id, n_models, n_reused, outcomes,
              started: float) -> SweepSummary:
    runs = [r for r in finished_runs(sweep_id, experiment_id, client) if int(r.data.tags["index"]) < n_models]
    walls = np.array([(r.info.end_time - r.info.start_time) / 1000 for r in runs if r.info.end_time] or [0.0])
    failures = [{"index": o.task.index, "run_id": o.run_id, "error": o.error} for o in outcomes
                if o.status == "failed"]
    return SweepSummary(sweep_id, parent_run_id, experiment_id, n_models, len(runs), n_reused,
                        sum(o.status == "trained" for o in outcomes), len(failures),
                        float(np.median(walls)), float(np.percentile(walls, 90)),
                        time.monotonic() - started, failures)


def log_summary(client: MlflowClient, summary: SweepSummary) -> None:
    values = {k: v for k, v in asdict(summary).items() if isinstance(v, (int, float)) and k != "n_models"}
    previous = client.get_run(summary.parent_run_id).data.tags.get("n_models", "0")
    log_metrics(client, summary.parent_run_id, values)
    client.set_tag(summary.parent_run_id, "n_models", str(max(int(previous), summary.n_models)))
    client.log_dict(summary.parent_run_id, asdict(summary), "sweep_summary.json")
    client.set_terminated(summary.parent_run_id, status="FINISHED" if summary.complete else "FAILED")


def sweep_with_summary(config: RunConfig, settings: SweepSettings = SweepSettings(), *, ctx: Context,
                       experiment: str = DEFAULT_EXPERIMENT, extra_params: dict | None = None,
                       provenance: Provenance | None = None, invocation_run_id: str | None = None) -> SweepSummary:
    """Run (or resume, or grow) the sweep of ``config`` to ``settings.n_models`` FINISHED runs.

    ``ctx`` says which store, which data and where models train (and how many at once:
    ``ctx.execution.pack``); ``provenance`` (where the config came from, the tune run whose recipe
    it carries) is recorded on the parent run.
    """
    started = time.monotonic()
    n_models, sweep_id = settings.n_models, settings.sweep_id
    params = sweep_params(config, extra_params)
    key = sweep_key(config, data_digest(config.data, ctx.dirs), extra_params)
    sweep_id = check_sweep_id(sweep_id) if sweep_id else f"sweep-{key[:12]}"
    # a pack that cannot fit is refused before anything is recorded
    pack = resolve_pack(config, ctx.execution, ctx.dirs)
    client = ctx.client
    experiment_id = get_experiment_id(client, experiment)
    tags = {**step_tags(key), PROVENANCE_TAG: (provenance or Provenance("?")).to_json()}
    if provenance is not None and provenance.tune_run_id:
        tags[TUNE_RUN_TAG] = provenance.tune_run_id
    parent = resolve_parent(client, experiment_id, sweep_id, params, invocation_run_id, tags)
    client.update_run(parent, status="RUNNING")
    done = {int(r.data.tags["index"]) for r in finished_runs(sweep_id, experiment_id, client)}
    todo = [i for i in range(n_models) if i not in done]
    n_reused = n_models - len(todo)
    log.info("sweep %s: parent run %s, %d of %d models already FINISHED", sweep_id, parent, n_reused, n_models)
    job = Job(config, experiment, ctx.tracking_uri, ctx.dirs, settings.log_checkpoint, pack,
              ctx.execution.compile)
    outcomes = run_tasks(job, sweep_tasks(sweep_id, parent, todo), ctx.execution, n_total=n_models, n_done=n_reused,
                         progress=ctx.progress, desc=sweep_id)
    summary = summarise(client, experiment_id, sweep_id, parent, n_models, n_reused, outcomes, started)
    describe_step(client, parent, sweep_note(summary, config), sweep_id, invocation_run_id)
    log_summary(client, summary)
    return summary


def sweep_note(summary: SweepSummary, config: RunConfig) -> str:
    """The parent run's description in the MLflow UI."""
    d = config.data
    return (f"Sweep `{summary.sweep_id}`: {summary.n_finished} of {summary.n_models} subset runs FINISHED (child "
            f"runs `NNNNN · {summary.sweep_id[:10]}`; filter `tags.sweep_id = {quote(summary.sweep_id)}`), "
            f"each pretrained on a random {config.alpha:g} of the `{d.source}` "
            f"classes and transferred to `{d.target}` ({config.transfer.mode} transfer). Each run's Dataset column "
            f"shows the source classes it kept. Counts and run times: `sweep_summary.json`. Next: `transfer-core "
            f"analyze --sweep {summary.sweep_id}`.")


def run_sweep(config: RunConfig, settings: SweepSettings = SweepSettings(), **options) -> str:
    """Run, resume or grow a sweep (see :func:`sweep_with_summary` for options); returns its id.

    Raises SweepIncomplete if some runs failed (they are retried by the next call).
    """
    summary = sweep_with_summary(config, settings, **options)
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
