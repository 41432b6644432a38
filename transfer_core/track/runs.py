"""What every step does with MLflow runs, in one place.

Every run the tool makes carries the tag ``transfer_core.kind`` (``subset_run``, ``sweep``,
``tune``, ``analysis``, ``attribution``, ``counterfactual``, ``counterfactual_run``, ``register``, ``main``).
This module finds runs by kind and tags, checks that a given id is a run of the expected
kind, logs params without clashing with those already logged, names and describes runs (the
UI's note), and ends a run FINISHED, or FAILED with the reason, around the work it records.
"""
from __future__ import annotations

import logging
import math
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking import SEARCH_MAX_RESULTS_THRESHOLD
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from transfer_core.config import ConfigError, RunConfig, from_params

log = logging.getLogger(__name__)
KIND_TAG = "transfer_core.kind"
# The kinds of run, the values of KIND_TAG: each step's runs, and the models they train.
SUBSET_RUN = "subset_run"  # one model of a sweep
SWEEP = "sweep"  # the parent of a sweep's models
TUNE = "tune"  # an Optuna study call; its children are TUNE_TRIAL runs
TUNE_TRIAL = "tune_trial"
ANALYSIS = "analysis"
ATTRIBUTION = "attribution"  # class influences by gradient attribution from a few models
COUNTERFACTUAL = "counterfactual"  # the parent of a counterfactual grid
COUNTERFACTUAL_RUN = "counterfactual_run"  # one grid point
REGISTER = "register"
MAIN = "main"
ERROR_TAG = "error"  # the one-line reason a run ended FAILED
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI
NOTE_CHARS = 5000  # MLflow keeps tag values up to 8,000 characters
PARAM_BATCH = 100  # MLflow's limit of params per log_batch call


def quote(value) -> str:
    """``value`` as a filter-string literal. Ids, hashes and names never hold quotes; refuse any that do."""
    text = str(value)
    if "'" in text or "\\" in text:
        raise ConfigError(f"{text!r} cannot be searched for: it contains a quote or backslash; "
                          "use letters, digits, '_', '.' and '-'")
    return f"'{text}'"


def run_filter(kind: str | None = None, status: str | None = None, **tags) -> str:
    """A ``search_runs`` filter: ``kind`` (the ``transfer_core.kind`` tag), tag equalities, status."""
    parts = [] if kind is None else [f"tags.`{KIND_TAG}` = {quote(kind)}"]
    parts += [f"tags.`{name}` = {quote(value)}" for name, value in tags.items()]
    if status is not None:
        parts.append(f"attributes.status = {quote(status)}")
    return " and ".join(parts)


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str, order_by=None,
               view_type: int = ViewType.ACTIVE_ONLY) -> list:
    """Every run matching ``filter_string``: one query, paged when there are more than 50,000.

    ``view_type=ViewType.ALL`` includes deleted runs (for what must count even when deleted).
    """
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, view_type,
                                  SEARCH_MAX_RESULTS_THRESHOLD, order_by, token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def all_experiment_ids(client: MlflowClient, view_type: int = ViewType.ACTIVE_ONLY) -> list[str]:
    ids, token = [], None
    while True:
        page = client.search_experiments(view_type, max_results=1000, page_token=token)
        ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            return ids


def latest_run(client: MlflowClient, experiment_id: str, kind: str | None, status: str | None = "FINISHED",
               **tags):
    """The most recently started run of ``kind`` (any kind when None) with these tags and ``status``, or None."""
    found = client.search_runs([experiment_id], run_filter(kind, status, **tags), max_results=1,
                               order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def get_run_of_kind(client: MlflowClient, run_id: str, kind: str, command: str, finished: bool = False):
    """The run ``run_id``, checked to be of ``kind`` (and FINISHED); a one-sentence ConfigError otherwise.

    ``command`` names what makes such runs, e.g. ``transfer-core analyze``.
    """
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"there is no MLflow run {run_id!r} in this tracking store; give the id of a "
                          f"`{command}` run") from None
    found = run.data.tags.get(KIND_TAG)
    if found != kind:
        raise ConfigError(f"run {run_id} is {_article(found) if found else 'an untagged'} run, not "
                          f"{_article(kind)} run; give the id of a `{command}` run")
    if finished and run.info.status != "FINISHED":
        raise ConfigError(f"{kind} run {run_id} is {run.info.status}, not FINISHED; rerun `{command}` "
                          "or give a finished run")
    return run


def find_run_of_kind(client: MlflowClient, experiment_id: str, kind: str, command: str, run_id: str | None = None):
    """The FINISHED ``kind`` run ``run_id`` (checked by :func:`get_run_of_kind`), or the experiment's latest
    FINISHED run of ``kind``; a one-sentence ConfigError naming ``command`` when there is none."""
    if run_id:
        return get_run_of_kind(client, run_id, kind, command, finished=True)
    run = latest_run(client, experiment_id, kind)
    if run is None:
        raise ConfigError(f"the experiment has no FINISHED {kind} run; run `{command}` first "
                          "or pass --analysis RUN_ID")
    return run


def _article(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def log_new_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log the params ``run_id`` does not hold yet (a param, once logged, cannot change)."""
    present = client.get_run(run_id).data.params
    items = [Param(k, str(v)) for k, v in params.items() if k not in present]
    for start in range(0, len(items), PARAM_BATCH):
        client.log_batch(run_id, params=items[start:start + PARAM_BATCH])


def set_tags(client: MlflowClient, run_id: str, tags: dict) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def describe_run(client: MlflowClient, run_id: str, note: str, name: str | None = None) -> None:
    """Give run ``run_id`` its description (the MLflow UI's note, markdown) and, when given, a name."""
    tags = {NOTE_TAG: note[:NOTE_CHARS]}
    if name:
        tags[MLFLOW_RUN_NAME] = name
    set_tags(client, run_id, tags)


def describe_step(client: MlflowClient, run_id: str, note: str, name: str | None = None,
                  invocation_run_id: str | None = None) -> None:
    """Describe a step's run; an ``mlflow run`` run that is not that run gets the name and a pointer to it."""
    describe_run(client, run_id, note, name)
    if invocation_run_id and invocation_run_id != run_id:
        describe_run(client, invocation_run_id, f"This `mlflow run` step recorded its work in run `{run_id}`"
                     f"{f' ({name})' if name else ''}:\n\n{note}", name)


def metric_value(value) -> float:
    """``value`` as logged: 6 significant digits, what a float32 accuracy or a timing measures
    (0.23999999463558197, a float32 mean of 0/1, is logged as 0.24)."""
    return float(f"{float(value):.6g}")


def log_metrics(client: MlflowClient, run_id: str, metrics: dict, step: int = 0) -> None:
    """Log ``{name: value}`` in one batch (see :func:`metric_value`); values that are not finite numbers
    are left out."""
    now = now_ms()
    items = [Metric(k, metric_value(v), now, step) for k, v in metrics.items()
             if v is not None and math.isfinite(float(v))]
    for start in range(0, len(items), 1000):  # MLflow's limit of metrics per log_batch call
        client.log_batch(run_id, metrics=items[start:start + 1000])


def one_line(exc: BaseException) -> str:
    """The last line of an exception's message, at most 500 characters."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return (text.splitlines() or [type(exc).__name__])[-1][:500]


def mark_failed(client: MlflowClient, run_id: str, exc: BaseException) -> None:
    """End ``run_id`` FAILED with the reason in its ``error`` tag."""
    message = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000]
    try:
        client.set_tag(run_id, ERROR_TAG, message)
        client.set_terminated(run_id, status="FAILED")
    except Exception as store_error:  # the store failed too: the run stays RUNNING and counts as dead later
        log.warning("could not mark run %s FAILED (%s); the original error follows", run_id, one_line(store_error))


@contextmanager
def run_scope(client: MlflowClient, run_id: str, finish: bool = True):
    """Do the work of run ``run_id`` inside: it ends FINISHED (when ``finish``), or FAILED with the reason."""
    try:
        yield run_id
    except BaseException as exc:
        mark_failed(client, run_id, exc)
        raise
    if finish:
        client.set_terminated(run_id, status="FINISHED")


def now_ms() -> int:
    return int(time.time() * 1000)


def run_config(run) -> RunConfig:
    """The RunConfig a logged run used, rebuilt from its params."""
    return from_params(run.data.params)


def to_local_path(artifact_uri: str) -> Path | None:
    """The local folder behind ``artifact_uri``, or None when it is remote."""
    if artifact_uri.startswith("file://"):
        return Path(artifact_uri[len("file://"):])
    if "://" not in artifact_uri and ":" not in artifact_uri.split("/")[0]:
        return Path(artifact_uri)
    return None


def artifact_path(run, name: str, client: MlflowClient) -> Path:
    """A local path to artifact ``name`` of ``run``: read in place when local, else downloaded through
    ``client``, the store's own (a server's artifacts are reached through its tracking URI, never MLflow's
    global one)."""
    local = to_local_path(run.info.artifact_uri)
    if local is not None:
        return local / name
    return Path(client.download_artifacts(run.info.run_id, name))
