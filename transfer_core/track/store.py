"""The tracking store: where it is, making it safely, and the experiments in it.

The default store is embedded: ``sqlite:///mlruns/mlflow.db`` with artifacts under
``mlruns/``. ``$MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) points elsewhere, e.g. at an
``mlflow server`` that many workers share, possibly behind MLflow's basic-auth app
(credentials in ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, checked up front).

A brand-new sqlite store is created and migrated by MLflow the first time a process opens
it; two processes doing that at once crash inside alembic. :func:`open_store` therefore
opens a sqlite store under an exclusive file lock (``<db>.lock``), so exactly one process
creates or migrates it and the others wait, then find it ready. Afterwards MLflow's own
``busy_timeout`` (20 s) lets concurrent writers queue instead of failing.

Nothing here sets MLflow's global tracking URI or the environment: :func:`open_store` returns
the URI, the entry point puts it in its context (:class:`transfer_core.execute.Context`), and
every client is made for it (:func:`client_for`). Every experiment the tool creates in a sqlite
store keeps its artifacts next to the database (``<db folder>/artifacts/<experiment name>``),
wherever the command was started; MLflow's own default is ``./mlruns`` of the creating process.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from transfer_core.config import ConfigError

DEFAULT_STORE_DIR = Path("mlruns")
DEFAULT_EXPERIMENT = "transfer_core"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens an experiment by this tag
EXPERIMENT_KIND = "custom_model_development"  # "Training runs", not the GenAI views (but see ui_url)
INIT_TRIES = 5  # attempts at opening a store that another process is still creating


class TrackingError(ConfigError):
    """The tracking store cannot be reached or holds something unexpected."""


def default_tracking_uri(create: bool = True) -> str:
    """The embedded store ``mlruns/mlflow.db`` of the working directory (its folder made if ``create``); the
    command line passes ``$MLFLOW_TRACKING_URI`` instead when it is set."""
    if create:
        DEFAULT_STORE_DIR.mkdir(exist_ok=True)
    return f"sqlite:///{(DEFAULT_STORE_DIR / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path not in ("", ":memory:") else None


def open_sqlite_store(uri: str) -> None:
    """Create or migrate the sqlite store at ``uri`` once, under a file lock next to it.

    MLflow caches the opened store per process, so later clients reuse it. A store another
    process holds busy is retried a few times; what still fails is one sentence.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    last = None
    for attempt in range(INIT_TRIES):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(path.with_name(path.name + ".lock")):
                MlflowClient(uri).search_experiments(max_results=1)
            return
        except Exception as exc:  # sqlalchemy OperationalError, alembic errors: retried, then explained
            last = exc
            time.sleep(0.5 * (attempt + 1))
    reason = str(last).strip().splitlines()[0][:300] if str(last).strip() else type(last).__name__
    raise TrackingError(f"cannot open the MLflow store {path} ({reason}); check that the folder is writable "
                        "and the file is an MLflow sqlite database, or point --tracking-uri elsewhere")


def open_store(tracking_uri: str | None = None) -> str:
    """The tracking URI to use (``tracking_uri``, else the embedded store), checked to answer; a new sqlite
    store is created under a lock. Sets nothing global, reads no environment (the command line does)."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).read()
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(f"cannot reach the MLflow tracking server at {uri} ({exc}); start it "
                                "with `mlflow server` or fix --tracking-uri / MLFLOW_TRACKING_URI") from None
        check_credentials(uri)
    open_sqlite_store(uri)
    return uri


@lru_cache(maxsize=None)
def client_for(tracking_uri: str) -> MlflowClient:
    """The one client of this process for ``tracking_uri`` (MLflow caches the store behind it)."""
    return MlflowClient(tracking_uri)


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: next to a sqlite database; None (MLflow's choice) elsewhere."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("._") or "experiment"
    folder = path.resolve().parent / "artifacts" / safe  # a folder of its own: never a name Python could import
    if folder.exists():  # another experiment's name maps to the same folder: keep them apart
        folder = folder.with_name(f"{safe}-{hashlib.sha256(experiment.encode()).hexdigest()[:6]}")
    return folder.as_uri()


def check_credentials(uri: str) -> None:
    """Refuse, in one sentence and before anything is written, a server that does not accept us.

    A server started with ``--app-name basic-auth`` answers 401 without (or with wrong)
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, and 403 to a user who may not read.
    """
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as exc:
        status = exc.get_http_status_code()
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        if status == 401:
            given = f"the password given for user {user!r}" if user else "no credentials"
            raise TrackingError(f"the MLflow tracking server at {uri} refused {given} (HTTP 401); set "
                                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of its "
                                "basic-auth app") from None
        if status == 403:
            raise TrackingError(f"the MLflow tracking server at {uri} does not let user {user!r} read experiments "
                                "(HTTP 403); ask its admin for READ (EDIT to log runs) permission") from None
        raise


def mark_training_experiment(client: MlflowClient, experiment) -> None:
    """Tag ``experiment`` as a model-training experiment, so MLflow's UI opens it on "Training runs".

    Called where the tool writes runs into an experiment, never by a lookup."""
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def get_experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, for writing runs into: created if missing (safe when two processes race),
    with its artifacts next to a sqlite store, and tagged as a training experiment."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name),
                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # another process created it first
            pass
        experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment {name!r} is deleted; restore it in the MLflow UI "
                            "or choose another --experiment")
    mark_training_experiment(client, experiment)
    return experiment.experiment_id


def existing_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, which must exist (for steps that only read); writes nothing."""
    found = client.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment {name!r} does not exist in this tracking store; check --experiment "
                            "and --tracking-uri")
    return found.experiment_id


def ui_url(experiment_id: str, run_id: str | None = None, artifact: str | None = None,
           base: str = "http://127.0.0.1:5000", query: dict[str, str] | None = None, tab: str | None = None) -> str:
    """A link into the MLflow UI in Model training mode (``tab``: an experiment tab such as ``runs``;
    ``query``: further URL parameters).

    MLflow 3.17's UI opens every experiment in the mode of a per-browser toggle (GenAI by
    default), not by the experiment's ``mlflow.experimentKind`` tag; ``workflowType`` in the
    link chooses Model training.
    """
    path = f"#/experiments/{experiment_id}" + (f"/{tab}" if tab and not run_id else "")
    if run_id:
        path += f"/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "")
    parameters = {**(query or {}), "workflowType": "machine_learning"}
    return f"{base}/{path}?" + "&".join(f"{k}={v}" for k, v in parameters.items())
