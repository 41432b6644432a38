"""Counterfactual check of an influence ranking: retrain without the classes it names.

For every point of a grid (order, k, seed) the source model is retrained from scratch on
the full source minus ``k`` classes and transferred to the target, as one MLflow child run:

  ``bottom``  removes the k most detrimental classes (most negative influence first);
  ``top``     removes the k most helpful classes (most positive influence first);
  ``random``  removes k classes drawn at random (a fixed permutation per seed, so the
              removal sets of one seed are nested as k grows).

``k = 0`` is the full source; its runs (order tag ``full``) are shared by all orders.
Seed ``s`` trains every point with the same training seed, so differences between
orders and from the full source are paired per seed. The grid is resumable: a point
with a FINISHED run of the same counterfactual id is never retrained.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mlflow.entities import Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from .config import ConfigError, RunConfig
from .counterfactual_exec import Point, train_points
from .tracking import KIND_TAG

log = logging.getLogger(__name__)
ORDERS = ("bottom", "top", "random")
FULL = "full"  # order tag of the k = 0 runs
PARENT_KIND = "counterfactual"
CHILD_KIND = "counterfactual_run"


@dataclass(frozen=True)
class CounterfactualPlan:
    """The grid: removal orders, numbers of removed classes (0 added), seeds ``0..n_seeds-1``."""

    orders: tuple[str, ...] = ORDERS
    ks: tuple[int, ...] = (0, 5, 10, 20)
    n_seeds: int = 3

    def validate(self, n_classes: int) -> "CounterfactualPlan":
        unknown = [o for o in self.orders if o not in ORDERS]
        if unknown or not self.orders:
            raise ConfigError(f"unknown removal order(s) {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(ORDERS)}, e.g. --orders bottom,top,random")
        if any(k < 0 for k in self.ks):
            raise ConfigError(f"every k must be >= 0, got {list(self.ks)}")
        if max(self.ks, default=0) >= n_classes:
            raise ConfigError(f"k={max(self.ks)} would remove every one of the {n_classes} source "
                              f"classes; choose ks below {n_classes}")
        if self.n_seeds < 1:
            raise ConfigError(f"--seeds must be a positive integer, got {self.n_seeds}")
        return CounterfactualPlan(tuple(dict.fromkeys(self.orders)), tuple(sorted({0, *self.ks})),
                                  self.n_seeds)

    def points(self) -> list[tuple[str, int, int]]:
        """``(order, k, seed)`` for every run: the full source first, then k ascending."""
        pts = [(FULL, 0, s) for s in range(self.n_seeds)]
        for k in self.ks:
            if k > 0:
                pts += [(o, k, s) for o in self.orders for s in range(self.n_seeds)]
        return pts


def parse_list(text: str, kind: type, what: str) -> tuple:
    """``"0,5,10"`` -> ``(0, 5, 10)``, with a clear error naming ``what``."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return tuple(kind(t) for t in items)
    except ValueError:
        raise ConfigError(f"{what} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None


def ranking_order(ranking: pd.DataFrame, class_names: list[str]) -> np.ndarray:
    """Class indices ``(n_classes,)`` sorted by influence, most helpful first.

    ``ranking`` is an analysis run's ``class_influence.csv`` table (columns ``class_index``,
    ``influence``, optionally ``class_name``); positive influence = including the class helps.
    """
    missing = {"class_index", "influence"} - set(ranking.columns)
    if missing:
        raise ConfigError(f"the class ranking lacks column(s) {', '.join(sorted(missing))}; "
                          "give an analysis run's class_influence.csv")
    idx = ranking["class_index"].to_numpy(int)
    if sorted(idx.tolist()) != list(range(len(class_names))):
        raise ConfigError(f"the class ranking covers {len(idx)} classes but the source has "
                          f"{len(class_names)}; analyse a sweep of the same source")
    if "class_name" in ranking.columns:
        wrong = [(i, n) for i, n in zip(idx, ranking["class_name"]) if class_names[i] != n]
        if wrong:
            i, n = wrong[0]
            raise ConfigError(f"the ranking names class {i} {n!r} but the source calls it "
                              f"{class_names[i]!r}; analyse a sweep of the same source")
    order = np.argsort(-ranking["influence"].to_numpy(float), kind="stable")
    return idx[order]


def removal_set(order: str, k: int, seed: int, ranked: np.ndarray, random_seed: int = 0) -> np.ndarray:
    """Indices of the ``k`` removed classes; ``ranked`` is :func:`ranking_order`'s output."""
    if k == 0:
        return np.array([], dtype=int)
    if order == "top":
        return np.sort(ranked[:k])
    if order == "bottom":
        return np.sort(ranked[::-1][:k])
    if order == "random":  # one permutation per seed: the sets of one seed are nested in k
        perm = np.random.default_rng([int(random_seed), int(seed), 11]).permutation(len(ranked))
        return np.sort(perm[:k])
    raise ConfigError(f"unknown removal order {order!r}; choose from {', '.join(ORDERS)}")


def counterfactual_id(config: RunConfig, ranked: np.ndarray, analysis_run_id: str | None) -> str:
    """Stable id of (config, ranking, analysis run): the same command resumes the same grid."""
    key = json.dumps([config.config_hash(), ranked.tolist(), analysis_run_id or ""])
    return "cf-" + hashlib.sha256(key.encode()).hexdigest()[:10]


@dataclass
class CounterfactualRuns:
    """What :func:`run_counterfactual` returns: the parent run and one row per grid point."""

    parent_run_id: str
    counterfactual_id: str
    table: pd.DataFrame  # order, k, seed, run_id, removed, target_val_acc, target_test_acc, source_acc
    class_names: list[str]
    n_trained: int  # runs trained by this call (the rest were reused)


def quote(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


def finished_children(client, experiment_id: str, cf_id: str) -> dict[tuple[str, int, int], object]:
    """FINISHED runs of counterfactual ``cf_id`` keyed by (order, k, seed); the oldest wins."""
    runs = client.search_runs([experiment_id], max_results=50000, order_by=["attributes.start_time ASC"],
                              filter_string=f"tags.`{KIND_TAG}` = {quote(CHILD_KIND)} and tags.counterfactual_id = "
                                            f"{quote(cf_id)} and attributes.status = 'FINISHED'")
    done = {}
    for run in runs:
        t = run.data.tags
        done.setdefault((t["order"], int(t["k"]), int(t["seed"])), run)
    return done


def _parent_run(client, experiment_id: str, cf_id: str, tags: dict, params: dict, run_id: str | None) -> str:
    """The parent run: ``run_id`` (e.g. from ``mlflow run``), else this grid's earlier parent, else new."""
    if run_id is None:
        found = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                                   filter_string=f"tags.`{KIND_TAG}` = {quote(PARENT_KIND)} and "
                                                 f"tags.counterfactual_id = {quote(cf_id)}")
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run_id = client.create_run(experiment_id, tags={MLFLOW_RUN_NAME: cf_id}).info.run_id
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    logged = client.get_run(run_id).data.params
    new = {k: v for k, v in params.items() if k not in logged}
    if new:
        client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()])
    return run_id


def run_counterfactual(runner, ranking: pd.DataFrame, plan: CounterfactualPlan, *,
                       analysis_run_id: str | None = None, source_sweep_id: str | None = None,
                       parent_run_id: str | None = None, workers: int = 1, data_root=None,
                       progress: bool = True) -> CounterfactualRuns:
    """Train every missing grid point with ``runner`` (a :class:`SubsetRunner`) and log it.

    ``workers > 1`` trains points in that many processes (``data_root`` is what they load).
    Each child run keeps its transferred model (``model.pt``) so the registry can log the
    chosen one without retraining. Returns the parent run id and the table of all points.
    """
    names = runner.source_class_names
    plan = plan.validate(len(names))
    ranked = ranking_order(ranking, names)
    config, client = runner.config, runner.client
    cf_id = counterfactual_id(config, ranked, analysis_run_id)
    common = {"counterfactual_id": cf_id, "analysis_run_id": analysis_run_id or "",
              "source_sweep_id": source_sweep_id or ""}
    parent = _parent_run(client, runner.experiment_id, cf_id,
                         {KIND_TAG: PARENT_KIND, **common, "orders": ",".join(plan.orders),
                          "ks": ",".join(map(str, plan.ks)), "n_seeds": plan.n_seeds},
                         config.to_params(), parent_run_id)
    done = finished_children(client, runner.experiment_id, cf_id)
    todo = [p for p in plan.points() if p not in done]
    log.info("counterfactual %s: %d of %d runs already FINISHED", cf_id, len(plan.points()) - len(todo),
             len(plan.points()))
    points = []
    for order, k, seed in todo:
        removed = removal_set(order, k, seed, ranked, config.sweep_seed)
        mask = np.ones(len(names), dtype=bool)
        mask[removed] = False
        tags = {**common, KIND_TAG: CHILD_KIND, "order": order, "k": str(k), "seed": str(seed),
                "removed": json.dumps(removed.tolist())[:4900]}
        points.append(Point(seed, mask, tags, f"{order}-k{k}-s{seed}", parent))
    train_points(runner, points, workers, data_root, progress, desc=f"counterfactual {cf_id}")
    done = finished_children(client, runner.experiment_id, cf_id)
    rows = []
    for order, k, seed in plan.points():
        run = done[(order, k, seed)]
        removed = removal_set(order, k, seed, ranked, config.sweep_seed)
        rows.append({"order": order, "k": k, "seed": seed, "run_id": run.info.run_id,
                     "removed": ";".join(names[i] for i in removed),
                     **{m: run.data.metrics.get(m, np.nan)
                        for m in ("target_val_acc", "target_test_acc", "source_acc")}})
    return CounterfactualRuns(parent, cf_id, pd.DataFrame(rows), names, len(todo))

