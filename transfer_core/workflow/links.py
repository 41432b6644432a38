"""The links into the MLflow UI that ``transfer-core ui`` prints: per study, the pages ``main`` points at.

For each training experiment of a store (the ones this tool wrote), from what the store holds now:

- **runs**: the experiment in Model training mode;
- **every model** and **accuracy vs k**: the pipeline's shared views (:mod:`transfer_core.track.views`);
- **analysis report**: ``report.html`` of the latest FINISHED analysis run, in its Artifacts tab;
- **its figure**: the latest FINISHED counterfactual run's figure of accuracy against k;
- **registered model**: the registry page of the version the ``champion`` alias points at.

A link is printed only when what it opens exists (a view's tag, a run's artifact, the alias), so no
printed link leads to an empty page.
"""
from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from transfer_core.analysis.writers import REPORT_ARTIFACT
from transfer_core.counterfactual.report import PLOT_ARTIFACT
from transfer_core.registry import CHAMPION, model_name
from transfer_core.track import latest_run
from transfer_core.track.runs import ANALYSIS, COUNTERFACTUAL
from transfer_core.track.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, ui_url
from transfer_core.track.ui import model_version_url
from transfer_core.track.views import CHART_VIEW, RUNS_VIEW, SHARED_VIEW_PREFIX, view_url

BASE = "http://127.0.0.1:5000"


def _has_artifact(client: MlflowClient, run, name: str) -> bool:
    return any(f.path == name for f in client.list_artifacts(run.info.run_id))


def study_links(client: MlflowClient, experiment, base: str = BASE) -> list[tuple[str, str]]:
    """(label, link) of every page of the module docstring that ``experiment`` (an MLflow Experiment) has."""
    exp = experiment.experiment_id
    links = [("runs", ui_url(exp, base=base))]
    if SHARED_VIEW_PREFIX + RUNS_VIEW in experiment.tags:
        links.append(("every model", view_url(exp, RUNS_VIEW, base=base)))
    if SHARED_VIEW_PREFIX + CHART_VIEW in experiment.tags:
        links.append(("accuracy vs k", view_url(exp, CHART_VIEW, chart=True, base=base)))
    analysis = latest_run(client, exp, ANALYSIS)
    if analysis is not None and _has_artifact(client, analysis, REPORT_ARTIFACT):
        links.append(("analysis report", ui_url(exp, analysis.info.run_id, REPORT_ARTIFACT, base=base)))
    counterfactual = latest_run(client, exp, COUNTERFACTUAL)
    if counterfactual is not None and _has_artifact(client, counterfactual, PLOT_ARTIFACT):
        links.append(("its figure", ui_url(exp, counterfactual.info.run_id, PLOT_ARTIFACT, base=base)))
    name = model_name(experiment.name)
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # nothing registered for this experiment yet
        version = None
    if version is not None:
        links.append(("registered model", model_version_url(name, version.version, base=base)))
    return links


def store_links(client: MlflowClient, base: str = BASE, first: str | None = None) -> list[str]:
    """The lines ``transfer-core ui`` prints: one block per training experiment of the store (``first``,
    the one the bare address opens, at the top), each a name and its :func:`study_links`."""
    experiments = client.search_experiments(filter_string=f"tags.`{EXPERIMENT_KIND_TAG}` = '{EXPERIMENT_KIND}'")
    experiments.sort(key=lambda e: e.name != first)  # stable: the rest keep MLflow's order
    lines = []
    for experiment in experiments:
        lines.append(f"{experiment.name}:")
        lines += [f"  {label + ':':<18}{link}" for label, link in study_links(client, experiment, base)]
    return lines or ["no experiment written by transfer-core in this store yet: run `make run` first"]
