"""The champion gate, read from the tracking store: plans, their looks, and their evidence.

A counterfactual run (one *plan*, :mod:`~transfer_core.counterfactual.grid`) records what it
asked for as the tag ``plan`` (orders, ks, seeds, grid, analysis run, and the digests of the
validation split and its halves). Everything the gate decides is recomputed from the store:

- :func:`grid_table` rebuilds a plan's table from its points' FINISHED runs: their logged
  metrics and per-example validation outputs (the selection-half accuracy of each seed is
  recomputed from ``target_val_outputs.npz``, after checking that the halves are the ones the
  plan recorded);
- :func:`look_of` numbers the plan's look at its selection half: every plan whose results were
  shown on that half, in any experiment of the store (deleted runs included), ordered by when
  they were first shown (tag :data:`FIRST_SHOWN_TAG`);
- :func:`recompute_selection` applies the current champion rule to both, as ``counterfactual``
  does when it reports and ``register`` does again before it registers anything.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from transfer_core.config import ConfigError
from transfer_core.counterfactual.grid import plan_from_record
from transfer_core.counterfactual.summary import RULE_VERSION, SELECT_METRIC, EvidenceRule, Selection, select
from transfer_core.data import half_digest, validation_halves
from transfer_core.track import (CLASSES_ARTIFACT, VAL_OUTPUTS_ARTIFACT, artifact_path, now_ms, run_filter,
                                 search_all, set_tags)
from transfer_core.track.claims import is_superseded
from transfer_core.track.runs import COUNTERFACTUAL, COUNTERFACTUAL_RUN, all_experiment_ids

PLAN_TAG = "plan"  # JSON of grid.plan_record on a counterfactual run
FIRST_SHOWN_TAG = "transfer_core.first_shown_ms"  # when a plan's results were first shown: its look
METRICS = ("target_val_acc", "target_test_acc", "source_acc")


class StaleCounterfactual(ConfigError):
    """A counterfactual run lacks the record the current champion rule needs."""


def read_plan(run) -> dict:
    """The plan record of counterfactual run ``run``; :class:`StaleCounterfactual` when it has none."""
    record = json.loads(run.data.tags.get(PLAN_TAG) or "null")
    if not record or "selection_half_digest" not in record:
        analysis = run.data.tags.get("analysis_run_id") or "ANALYSIS_RUN_ID"
        raise StaleCounterfactual(
            f"counterfactual run {run.info.run_id} was made before plans and looks were recorded (champion rule "
            f"{RULE_VERSION}), so its evidence cannot be checked; redo it with `transfer-core counterfactual "
            f"--analysis {analysis}` (add --ks and --seeds as before) and register that run")
    return record


def finished_points(client: MlflowClient, experiment_id: str, grid: str) -> dict[tuple[str, int, int], object]:
    """FINISHED runs of grid ``grid`` keyed by (order, k, seed); the oldest wins."""
    runs = search_all(client, [experiment_id], run_filter(COUNTERFACTUAL_RUN, "FINISHED", grid_id=grid),
                      order_by=["attributes.start_time ASC"])
    done = {}
    for run in runs:
        t = run.data.tags
        done.setdefault((t["order"], int(t["k"]), int(t["seed"])), run)
    return done


def selection_half_accuracy(run, record: dict, client: MlflowClient | None = None) -> float:
    """A point's accuracy on the plan's selection half of the validation split (the half no ranking saw).

    The halves are recomputed from the run's validation labels and ``data.split_seed`` and checked
    against the digest the plan recorded; a mismatch is refused, never silently rescored.
    """
    path = artifact_path(run, VAL_OUTPUTS_ARTIFACT, client)
    if not path.is_file():
        raise ConfigError(f"grid run {run.info.run_id} has no {VAL_OUTPUTS_ARTIFACT}; rerun the counterfactual")
    with np.load(path) as npz:
        correct, labels = npz["correct"], npz["labels"]
    ranking = validation_halves(labels, int(run.data.params["data.split_seed"]))
    if half_digest(record["validation_digest"], "selection", ~ranking) != record["selection_half_digest"]:
        raise ConfigError(f"grid run {run.info.run_id} was scored on another validation split or halves than its "
                          "plan recorded; redo the counterfactual with the analysed sweep's data settings")
    return float(correct[~ranking].mean())


def grid_table(client: MlflowClient, experiment_id: str, record: dict) -> pd.DataFrame:
    """One row per point of the plan ``record``: order, k, seed, run_id, removed (class names ``;``-joined),
    target_val_acc, target_test_acc, source_acc, and ``select_acc`` (selection-half accuracy)."""
    plan = plan_from_record(record)
    done = finished_points(client, experiment_id, record["grid_id"])
    missing = [p for p in plan.points() if p not in done]
    if missing:
        order, k, seed = missing[0]
        raise ConfigError(f"{len(missing)} point(s) of grid {record['grid_id']} have no FINISHED run (first: {order}, "
                          f"k={k}, seed={seed}); run the same `transfer-core counterfactual` command to train them")
    names = json.loads(artifact_path(done[plan.points()[0]], CLASSES_ARTIFACT, client).read_text())
    rows = []
    for order, k, seed in plan.points():
        run = done[(order, k, seed)]
        removed = json.loads(run.data.tags.get("removed") or "[]")
        rows.append({"order": order, "k": k, "seed": seed, "run_id": run.info.run_id,
                     "removed": ";".join(names[i] for i in removed),
                     **{m: run.data.metrics.get(m, np.nan) for m in METRICS},
                     SELECT_METRIC: selection_half_accuracy(run, record, client)})
    return pd.DataFrame(rows)


def record_shown(client: MlflowClient, run) -> None:
    """Stamp the first time a plan's results are shown: from then on it counts as a look at its half."""
    if FIRST_SHOWN_TAG not in run.data.tags:
        set_tags(client, run.info.run_id, {FIRST_SHOWN_TAG: str(now_ms())})


def looks_at(client: MlflowClient, selection_half_digest: str) -> list:
    """Every plan shown on a selection half, in any experiment of the store (deleted ones too), in look order."""
    experiments = all_experiment_ids(client, ViewType.ALL)
    runs = search_all(client, experiments, run_filter(COUNTERFACTUAL, selection_half_digest=selection_half_digest),
                      view_type=ViewType.ALL)
    shown = [r for r in runs if FIRST_SHOWN_TAG in r.data.tags and not is_superseded(r)]
    return sorted(shown, key=lambda r: (int(r.data.tags[FIRST_SHOWN_TAG]), r.info.run_id))


def look_of(client: MlflowClient, run, record: dict) -> tuple[int, list[str]]:
    """``(look, earlier)``: which look at its selection half run ``run`` is (1 = the first), and the
    counterfactual runs that looked before it. The run must have been shown (:func:`record_shown`)."""
    order = [r.info.run_id for r in looks_at(client, record["selection_half_digest"])]
    if run.info.run_id not in order:
        raise ConfigError(f"counterfactual run {run.info.run_id} has not reported yet; run the same "
                          "`transfer-core counterfactual` command to finish it")
    position = order.index(run.info.run_id)
    return position + 1, order[:position]


def recompute_selection(client: MlflowClient, run,
                        rule: EvidenceRule = EvidenceRule()) -> tuple[Selection, pd.DataFrame]:
    """The champion decision of counterfactual run ``run`` under the current rule, from the store alone."""
    record = read_plan(run)
    table = grid_table(client, run.info.experiment_id, record)
    look, earlier = look_of(client, run, record)
    return select(table, rule, look, earlier), table
