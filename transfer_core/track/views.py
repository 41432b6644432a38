"""Saved views of the MLflow UI that one printed link opens, in any browser.

MLflow's UI keeps a runs table's filter, columns and charts in the browser's local storage. It
also reads them from the server: an experiment tag ``mlflow.sharedViewState.<key>`` holds the
envelope ``{name, createdAt, updatedAt, state}`` (``state`` is a JSON string of the search facets
and the UI state), and ``#/experiments/<id>/runs?viewStateShareKey=<key>`` opens it. The key names and
the card fields below are those of the MLflow 3.17 UI bundle; a key the UI does not know is ignored,
and ``runsExpanded`` is dropped on read, so a view selects runs by its filter, not by expanding
parents.

Nested runs as rows of their own: the runs table nests a child run under its parent (collapsed,
even when the filter leaves the parent out) while there is no filter or the table is ordered by
start time; with a filter and any other order it lists the matching runs flat (the bundle's
``nestChildren``). Grouping also flattens, but a group's row averages every numeric column of
its runs, params included (``k`` of a counterfactual grid came out as 18.75), and the UI shows
those means unrounded (it has no per-column number format). So the every-model view is ordered
by accuracy and not grouped: each row is one model, with the values it logged.

Two views per experiment, rewritten by every pipeline run (the same key, so the same link):
  ``transfer_core-runs``            every trained model (sweep and grid), most accurate first, one row
                                    each (its name says which: ``00039 · sweep-…``, ``bottom k20 s3 ·
                                    grid-…``), with accuracy, classes kept, order, k and seed as columns;
  ``transfer_core-counterfactual``  the counterfactual grid's points as a chart of target test
                                    accuracy against k, one point per (order, k), averaged over seeds.
"""
from __future__ import annotations

import json
import time
import uuid

from mlflow.tracking import MlflowClient

from transfer_core.track.runs import COUNTERFACTUAL_RUN, KIND_TAG, run_filter
from transfer_core.track.store import ui_url

SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
RUNS_VIEW = "transfer_core-runs"
CHART_VIEW = "transfer_core-counterfactual"
RUN_COLUMNS = (("metrics", "target_test_acc"), ("metrics", "target_val_acc"), ("params", "subset.n_kept"),
               ("params", "order"), ("params", "k"), ("params", "seed"), ("metrics", "source_acc"))


def column(kind: str, key: str) -> str:
    """A runs-table column as the UI names it: ``metrics.`target_test_acc```."""
    return f"{kind}.`{key}`"


def _facets(search_filter: str, order_by: str) -> dict:
    return {"searchFilter": search_filter, "orderByKey": order_by, "orderByAsc": False, "startTime": "ALL",
            "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": []}


def runs_view_state() -> dict:
    """The runs table of every trained model: sweep models and grid points, one row each, most accurate
    first (a filter plus an order other than start time lists nested runs flat; module docstring)."""
    kinds = f"tags.`{KIND_TAG}` LIKE '%_run'"  # subset_run and counterfactual_run (no IN for tags)
    return {**_facets(kinds, column("metrics", "target_test_acc")),
            "selectedColumns": [column(*c) for c in RUN_COLUMNS],
            "runsHiddenMode": "SHOW_ALL", "viewMaximized": False, "runListHidden": False, "groupBy": None,
            "groupsExpanded": {}, "hideEmptyCharts": True, "useGroupedValuesInCharts": True,
            "isAccordionReordered": False, "chartsSearchFilter": ""}


def chart_view_state(grid_id: str) -> dict:
    """One scatter chart: target test accuracy (y) against k (x), the runs of grid ``grid_id`` grouped
    by (order, k), so each point is one order at one k, averaged over seeds, in its group's colour."""
    section = str(uuid.uuid4())
    card = {"uuid": str(uuid.uuid4()), "type": "SCATTER", "xaxis": {"key": "k", "type": "PARAM"},
            "yaxis": {"key": "target_test_acc", "type": "METRIC"}, "runsCountToCompare": 1000,
            "metricSectionId": section, "deleted": False, "isGenerated": False,
            "displayName": "target test accuracy against k removed (mean over seeds, per order)"}
    points = run_filter(COUNTERFACTUAL_RUN, grid_id=grid_id)
    return {**_facets(points, "metrics.`target_test_acc`"),
            "selectedColumns": [column("params", "order"), column("params", "k"), column("params", "seed"),
                                column("metrics", "target_test_acc"), column("metrics", "target_val_acc")],
            "compareRunCharts": [card],
            "compareRunSections": [{"uuid": section, "name": "counterfactual", "display": True,
                                    "isReordered": False, "deleted": False, "isGenerated": False}],
            "groupBy": {"aggregateFunction": "average",
                        "groupByKeys": [{"mode": "param", "groupByData": "order"},
                                        {"mode": "param", "groupByData": "k"}]},
            "groupsExpanded": {}, "useGroupedValuesInCharts": True, "runsHiddenMode": "SHOW_ALL",
            "hideEmptyCharts": True, "viewMaximized": False, "runListHidden": False,
            "isAccordionReordered": False, "chartsSearchFilter": ""}


def save_view(client: MlflowClient, experiment_id: str, key: str, name: str, state: dict) -> None:
    """Write (or overwrite) the shared view ``key`` of ``experiment_id``."""
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + key, json.dumps(envelope))


def view_url(experiment_id: str, key: str, chart: bool = False, base: str = "http://127.0.0.1:5000") -> str:
    """The link that opens view ``key`` (in Model training mode; ``chart``: on the Chart tab).

    It names the Runs tab: ``#/experiments/<id>?viewStateShareKey=...`` is redirected to the
    experiment's overview, and the key is lost on the way."""
    return ui_url(experiment_id, base=base, tab="runs",
                  query={"viewStateShareKey": key, **({"compareRunsMode": "CHART"} if chart else {})})


def save_pipeline_views(client: MlflowClient, experiment_id: str, grid_id: str) -> dict[str, str]:
    """Write both views of the module docstring; returns {"runs": link, "chart": link}."""
    save_view(client, experiment_id, RUNS_VIEW, "transfer_core: every trained model", runs_view_state())
    save_view(client, experiment_id, CHART_VIEW, "transfer_core: counterfactual accuracy against k",
              chart_view_state(grid_id))
    return {"runs": view_url(experiment_id, RUNS_VIEW), "chart": view_url(experiment_id, CHART_VIEW, chart=True)}
