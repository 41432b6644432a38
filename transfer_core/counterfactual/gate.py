"""The champion gate, read from the tracking store: plans, their looks, and their evidence.

A counterfactual run (one *plan*, :mod:`~transfer_core.counterfactual.grid`) records what it
asked for as the tag ``plan`` (orders, ks, seeds, grid, analysis run, the digests of the
validation split and its halves, and the selection half's key); its id (tag
``counterfactual_id``) is a hash of that record. Everything the gate decides is recomputed,
and what can be checked is checked, refused with one sentence naming the run when it fails:

- :func:`read_plan` re-derives the plan's id from its record (an edited record is refused);
- :func:`grid_table` rebuilds a plan's table from its points' FINISHED runs: their logged
  metrics and per-example validation outputs (each file must match the digest logged with it,
  and its accuracy the logged ``target_val_acc``; the selection-half accuracy of each seed is
  recomputed from it, after checking that the halves are the ones the plan recorded);
- :func:`look_of` numbers the plan's look at its selection half from the look ledger merged
  with the store (:mod:`~transfer_core.counterfactual.looks`): every plan shown on the same
  images, in any store that shared the ledger, deleted and garbage-collected runs included;
- :func:`recompute_selection` applies the current champion rule to both, as ``counterfactual``
  does when it reports and ``register`` does again before it registers anything.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from transfer_core.config import ConfigError
from transfer_core.counterfactual.grid import plan_from_record, plan_id
from transfer_core.counterfactual.looks import FIRST_SHOWN_TAG, LookLedger, look_number, looks_at
from transfer_core.counterfactual.summary import RULE_VERSION, SELECT_METRIC, EvidenceRule, Selection, select
from transfer_core.data import file_digest, half_digest, validation_halves
from transfer_core.track import (CLASSES_ARTIFACT, VAL_OUTPUTS_ARTIFACT, VAL_OUTPUTS_DIGEST_TAG, artifact_path,
                                 metric_value, run_filter, search_all)
from transfer_core.track.runs import COUNTERFACTUAL_RUN

PLAN_TAG = "plan"  # JSON of grid.plan_record on a counterfactual run
METRICS = ("target_val_acc", "target_test_acc", "source_acc")
__all__ = ["FIRST_SHOWN_TAG", "PLAN_TAG", "StaleCounterfactual", "checked_val_outputs", "finished_points",
           "grid_table", "look_of", "read_plan", "recompute_selection", "selection_half_accuracy"]


class StaleCounterfactual(ConfigError):
    """A counterfactual run lacks the record the current champion rule needs."""


def read_plan(run) -> dict:
    """The plan record of counterfactual run ``run``, checked against its id.

    :class:`StaleCounterfactual` when it has none, or one made before looks were kept in the
    look ledger (no ``look_key``); a :class:`ConfigError` when the record does not hash to the
    run's ``counterfactual_id`` (it was edited after the plan was made).
    """
    record = json.loads(run.data.tags.get(PLAN_TAG) or "null")
    analysis = run.data.tags.get("analysis_run_id") or "ANALYSIS_RUN_ID"
    if not record or "selection_half_digest" not in record or "look_key" not in record:
        raise StaleCounterfactual(
            f"counterfactual run {run.info.run_id} was made before plans and looks were recorded in the look ledger "
            f"(champion rule {RULE_VERSION}), so its evidence cannot be checked; redo it with `transfer-core "
            f"counterfactual --analysis {analysis}` (add --ks and --seeds as before) and register that run")
    recorded = run.data.tags.get("counterfactual_id", "")
    if plan_id(record) != recorded:
        raise ConfigError(
            f"counterfactual run {run.info.run_id}: its plan tag does not hash to its counterfactual_id "
            f"{recorded or '(none)'} (the record was edited after the plan was made), so neither its seeds nor its "
            f"look can be trusted; rerun the plan's own `transfer-core counterfactual --analysis {analysis}` command "
            "and register that run")
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


def checked_val_outputs(run, client: MlflowClient | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(correct, labels)``, each ``(n_val,)``, of a grid point's validation outputs, once they are shown to be
    the file the run logged: its digest is the one logged with it, its accuracy the logged ``target_val_acc``."""
    path = artifact_path(run, VAL_OUTPUTS_ARTIFACT, client)
    name = run.info.run_id
    if not path.is_file():
        raise ConfigError(f"grid run {name} has no {VAL_OUTPUTS_ARTIFACT}; rerun the counterfactual")
    logged = run.data.tags.get(VAL_OUTPUTS_DIGEST_TAG)
    if not logged:
        raise ConfigError(f"grid run {name} carries no digest of its {VAL_OUTPUTS_ARTIFACT} (it was trained by an "
                          "older version), so its outputs cannot be checked; rerun the counterfactual with this "
                          "version, which retrains its grid")
    if file_digest(path) != logged:
        raise ConfigError(f"grid run {name}: its {VAL_OUTPUTS_ARTIFACT} does not match the digest logged with it "
                          f"({logged}), so the file was replaced after training; restore the original or retrain the "
                          "point (delete the run and rerun the counterfactual)")
    with np.load(path) as npz:
        correct, labels = npz["correct"], npz["labels"]
    accuracy = float(np.asarray(correct, dtype=float).mean())
    metric = run.data.metrics.get("target_val_acc")
    if metric is None or abs(metric_value(accuracy) - metric) > 1e-6:
        raise ConfigError(f"grid run {name}: its {VAL_OUTPUTS_ARTIFACT} gives validation accuracy {accuracy:.6f} but "
                          f"the run logged target_val_acc {metric}, so outputs and metric disagree; retrain the point "
                          "(delete the run and rerun the counterfactual)")
    return correct, labels


def selection_half_accuracy(run, record: dict, client: MlflowClient | None = None) -> float:
    """A point's accuracy on the plan's selection half of the validation split (the half no ranking saw).

    The outputs are checked first (:func:`checked_val_outputs`). The halves are recomputed from the
    run's validation labels and ``data.split_seed`` and checked against the digest the plan recorded;
    a mismatch is refused, never silently rescored.
    """
    correct, labels = checked_val_outputs(run, client)
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


def look_of(client: MlflowClient, ledger: LookLedger, run, record: dict) -> tuple[int, list[str]]:
    """``(look, earlier)``: which look at its selection half run ``run`` is (1 = the first), and the
    counterfactual runs that looked before it, from the look ledger merged with the store. The run
    must have been shown (:func:`~transfer_core.counterfactual.looks.record_look`)."""
    looks = looks_at(client, ledger, record["look_key"], record.get("selection_half_digest"))
    look, earlier = look_number(looks, run.info.run_id)
    if look == 0:
        raise ConfigError(f"counterfactual run {run.info.run_id} has not reported yet; run the same "
                          "`transfer-core counterfactual` command to finish it")
    return look, earlier


def recompute_selection(client: MlflowClient, run, rule: EvidenceRule = EvidenceRule(), *,
                        ledger: LookLedger) -> tuple[Selection, pd.DataFrame]:
    """The champion decision of counterfactual run ``run`` under the current rule, from its runs and the
    look ledger (merged with the store)."""
    record = read_plan(run)
    table = grid_table(client, run.info.experiment_id, record)
    look, earlier = look_of(client, ledger, run, record)
    return select(table, rule, look, earlier), table
