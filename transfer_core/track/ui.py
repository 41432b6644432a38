"""The MLflow UI over a store this tool wrote: MLflow's own server app, whose bare address opens on the study.

MLflow 3.17's UI chooses its GenAI or Model training views from the link's ``workflowType``
parameter, else the browser's local storage key ``mlflow.workflowType_v1`` (a JSON string, written
when the user flips the toggle), else ``genai``; the experiment's ``mlflow.experimentKind`` tag
plays no part (mlflow/mlflow#24498). No server setting changes that default. So the bare address,
``http://127.0.0.1:5000`` typed by hand, shows GenAI mode in a new browser.

:func:`create_app` is an MLflow server app (the ``mlflow.app`` entry point ``transfer-core`` in
``pyproject.toml``, started by ``mlflow server --app-name transfer-core``, as MLflow's own
``basic-auth`` app is; the hook is documented at
https://mlflow.org/docs/latest/self-hosting/security/custom). It is MLflow's app, every route
unchanged, except that the UI's page (``index.html``) carries one small script ahead of MLflow's
bundle. In the browser, before the UI loads, that script

- writes ``mlflow.workflowType_v1 = "machine_learning"`` when the key is not set yet, so a new
  browser starts in Model training mode; a choice made later with the toggle is kept;
- sends the bare address (no ``#/...`` route) to the study's experiment, the link
  :func:`~transfer_core.track.store.ui_url` makes; any other address opens as MLflow would.

The experiment is looked up by name (``$TRANSFER_CORE_UI_EXPERIMENT``, default ``transfer_core``)
on each load of the page, so a study written after the server started is found too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from transfer_core.track.store import DEFAULT_EXPERIMENT, ui_url

APP_NAME = "transfer-core"  # the entry point's name in the mlflow.app group (pyproject.toml)
APP_ENTRY_POINT = "transfer_core.track.ui:create_app"
EXPERIMENT_ENV = "TRANSFER_CORE_UI_EXPERIMENT"  # the experiment the bare address opens
WORKFLOW_KEY = "mlflow.workflowType_v1"  # the UI bundle's useLocalStorage key: `${key}_v${version}`
WORKFLOW = "machine_learning"  # MLflow's value for Model training (the other is "genai")
# MLflow's job runner (huey consumers for GenAI jobs: scorers, trace rollups, issue detection),
# on by default; this tool starts no job, so its servers run without it.
JOB_EXECUTION_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def default_workers() -> int:
    """Uvicorn workers for the UI: one per two cores, at most 4 (MLflow's default of 4 workers took
    about 45 s to answer on 2 cores)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def model_version_url(name: str, version: str | int, base: str = "http://127.0.0.1:5000") -> str:
    """The registry page of version ``version`` of registered model ``name``, in Model training mode."""
    return f"{base}/#/models/{name}/versions/{version}?workflowType={WORKFLOW}"


def landing_script(route: str | None) -> str:
    """The script the UI's page runs before MLflow's bundle (see the module docstring).

    ``route`` is the ``#/...`` part of the link the bare address goes to; None: stay on MLflow's home.
    """
    lines = [f"try {{ if (window.localStorage.getItem({json.dumps(WORKFLOW_KEY)}) === null) "
             f"window.localStorage.setItem({json.dumps(WORKFLOW_KEY)}, {json.dumps(json.dumps(WORKFLOW))}); }} "
             "catch (e) {}"]  # storage refused (a locked-down browser): the links still carry workflowType
    if route:
        lines.append(f"if (!window.location.hash) window.history.replaceState(null, '', {json.dumps(route)});")
    return "\n".join(lines).replace("</", "<\\/")  # nothing in it can close the <script> element


def with_script(index_html: str, script: str) -> str:
    """MLflow's ``index.html`` with ``script`` as the first element of its head (before the bundle's own)."""
    head = index_html.find("<head>")
    if head < 0:
        raise ValueError("MLflow's index.html has no <head>: this MLflow version's UI is not the one "
                         "transfer_core.track.ui was written for")
    at = head + len("<head>")
    return f"{index_html[:at]}<script>{script}</script>{index_html[at:]}"


def experiment_route(name: str) -> str | None:
    """``#/experiments/<id>?workflowType=machine_learning`` of experiment ``name`` in the server's own
    store, or None when it does not exist (yet), is deleted, or the store cannot say."""
    from mlflow.server.handlers import _get_tracking_store  # the store this server's REST handlers use

    try:
        experiment = _get_tracking_store().get_experiment_by_name(name)
    except Exception:  # a store that cannot answer: MLflow's own page, which will say so
        return None
    if experiment is None or experiment.lifecycle_stage != "active":
        return None
    link = ui_url(experiment.experiment_id, base="")
    return link[link.index("#"):]


def create_app(app=None):
    """MLflow's server app, whose UI page opens on the study in Model training mode (module docstring).

    The factory MLflow calls for ``mlflow server --app-name transfer-core``. Like MLflow's
    ``basic-auth`` app it returns the FastAPI app around the Flask one under uvicorn (MLflow's
    default server) and the Flask app under gunicorn or waitress.
    """
    from flask import Response, request
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app as mlflow_app
    from mlflow.server.handlers import _add_static_prefix

    app = app or mlflow_app
    index = Path(app.static_folder) / "index.html"
    page = index.read_text() if index.is_file() else None
    if page is not None:
        with_script(page, "")  # an index.html this module does not know fails at start, not on each request
    index_path = _add_static_prefix("/")
    experiment = os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT

    @app.before_request
    def _the_ui_page():
        if page is None or request.method not in ("GET", "HEAD") or request.path != index_path:
            return None  # MLflow answers: every other route, and its own message without a built UI
        response = Response(with_script(page, landing_script(experiment_route(experiment))), mimetype="text/html")
        response.headers["Cache-Control"] = "no-cache"  # the route follows the store; no stale copy
        return response

    if _MLFLOW_SGI_NAME.get() == "uvicorn":  # `mlflow server` sets it for its workers; checked as basic-auth does
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
