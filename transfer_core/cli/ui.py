"""``transfer-core ui``: the MLflow UI over the project's store, opening on the study (docs/ui.md).

It prints the links of every study in the store (:mod:`transfer_core.workflow.links`), then
becomes ``mlflow server --app-name transfer-core`` (:mod:`transfer_core.track.ui`) on 127.0.0.1,
with MLflow's job runner off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): this tool starts no
MLflow job, and the runner's processes took most of the UI's 2.7 GiB (BENCHMARKS.md).
"""
from __future__ import annotations

import os
import socket
import sys
from importlib.metadata import entry_points

import click

from transfer_core.cli.commands import main
from transfer_core.cli.options import TEXT, IntRange, friendly_errors
from transfer_core.track import DEFAULT_EXPERIMENT
from transfer_core.track.ui import (APP_ENTRY_POINT, APP_NAME, EXPERIMENT_ENV, JOB_EXECUTION_ENV, default_workers)

LOOPBACK = "127.0.0.1"


def server_command(tracking_uri: str, artifact_root: str | None, host: str, port: int, workers: int) -> list[str]:
    """The ``mlflow server`` command line that serves the UI (with this process's Python)."""
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", APP_NAME, "--backend-store-uri", tracking_uri,
               "--host", host, "--port", str(port), "--workers", str(workers),
               # uvicorn logs every request by default; without that the printed links stay on screen
               "--uvicorn-opts", "--no-access-log"]
    if artifact_root:
        command += ["--default-artifact-root", artifact_root]
    return command


def check_app_installed() -> None:
    """Refuse, in one sentence, an install whose package metadata lacks the ``mlflow.app`` entry point."""
    found = {e.name: e.value for e in entry_points(group="mlflow.app")}
    if found.get(APP_NAME) != APP_ENTRY_POINT:
        raise click.ClickException(f"MLflow does not know the app {APP_NAME!r} ({APP_ENTRY_POINT}): the installed "
                                   "package's metadata predates it; reinstall the package (`make install`, or "
                                   "`pip install -e .` in the checkout)")


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror}): another MLflow UI may be "
                                       "running there; stop it, or pass --port") from None


@main.command("ui")
@click.option("--experiment", type=TEXT, default=None, show_default=DEFAULT_EXPERIMENT,
              help="The experiment that the bare address (http://HOST:PORT) opens.")
@click.option("--tracking-uri", type=TEXT, default=None, envvar="MLFLOW_TRACKING_URI",
              help="The MLflow store to serve: a sqlite:/// or other database URI [env: MLFLOW_TRACKING_URI]. "
                   "Default: mlruns/mlflow.db.")
@click.option("--host", type=TEXT, default=LOOPBACK, show_default=True,
              help="Interface to listen on. Anything but 127.0.0.1 lets other machines read the store "
                   "(see MLflow's --allowed-hosts).")
@click.option("--port", type=IntRange(1, 65535), default=5000, show_default=True, help="Port to listen on.")
@click.option("--workers", type=IntRange(min=1), default=None, show_default=str(default_workers()),
              help="Uvicorn worker processes (the default is one per two CPU cores, at most 4).")
@friendly_errors
def ui_command(experiment, tracking_uri, host, port, workers):
    """Serve the MLflow UI over the store; the bare address opens on the study in Model training mode.

    Prints the links of every study in the store (runs, every model, accuracy vs k, the analysis
    report, the counterfactual figure, the registered model's version), then runs `mlflow server`
    with this project's MLflow app and without MLflow's job runner, until Ctrl-C. Writes nothing
    to the store.
    """
    from mlflow.tracking import MlflowClient

    from transfer_core.track.store import default_tracking_uri, sqlite_path
    from transfer_core.workflow.links import store_links

    uri = tracking_uri or default_tracking_uri(create=False)
    if uri.startswith(("http://", "https://")):
        raise click.ClickException(f"{uri} is a tracking server, which serves its own UI: open it in a browser; "
                                   "`transfer-core ui` serves a store (a sqlite:/// or other database URI)")
    store = sqlite_path(uri)
    if store is not None and not store.is_file():
        raise click.ClickException(f"there is no MLflow store at {store} yet; run `make run` (or a transfer-core "
                                   "command) first, or pass --tracking-uri")
    check_app_installed()
    check_port_free(host, port)
    experiment = experiment or DEFAULT_EXPERIMENT
    base = f"http://{LOOPBACK if host in ('0.0.0.0', '::', '') else host}:{port}"
    for line in store_links(MlflowClient(uri), base, first=experiment):
        click.echo(line)
    click.echo(f"The MLflow UI answers at {base} (it opens on {experiment}, in Model training mode) once "
               "MLflow says 'Application startup complete'; Ctrl-C stops it.")
    env = {**os.environ, EXPERIMENT_ENV: experiment, JOB_EXECUTION_ENV: os.environ.get(JOB_EXECUTION_ENV, "false")}
    command = server_command(uri, str(store.parent) if store is not None else None, host, port,
                             workers or default_workers())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)  # this process becomes the server: nothing of it stays in memory
