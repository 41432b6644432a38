"""The counterfactual grid, as pure computation: which classes each point removes, and its id.

For every point of a grid (order, k, seed) the source model is retrained from scratch on
the full source minus ``k`` classes and transferred to the target, as one MLflow child run:

  ``bottom``  removes the k most detrimental classes (most negative influence first);
  ``top``     removes the k most helpful classes (most positive influence first);
  ``random``  removes k classes drawn at random (a fixed permutation per seed, so the
              removal sets of one seed are nested as k grows).

``k = 0`` is the full source; its runs (order tag ``full``) are shared by all orders.
Seed ``s`` trains every point with the same training seed, so differences between
orders and from the full source are paired per seed.

Two ids, two records:

- the **grid** (:func:`grid_id`) is every point that a ranking can ask for: the config it
  retrains with, the ranking and the analysis run. A point is trained once per grid: a
  FINISHED run of the same grid, order, k and seed is never retrained, whichever plan asked.
- a **plan** (:class:`CounterfactualPlan`, :func:`plan_id`) is what one command asked for: its
  orders, ks and seeds, fixed before anything trains, on the validation split and halves the
  analysis recorded. Another plan on the same analysis is another counterfactual run, never an
  overwrite (see :mod:`transfer_core.counterfactual.gate` for how plans count as looks).
"""
from __future__ import annotations


import numpy as np
import pandas as pd

from transfer_core.config import ConfigError, RunConfig
from transfer_core.track.steps import step_key

from transfer_core.counterfactual.settings import ORDERS, CounterfactualPlan


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


def grid_id(config: RunConfig, ranked: np.ndarray, analysis_run_id: str | None, data: str) -> str:
    """``grid-<10 hex>``, the step key of (config, ranking, analysis run, data digest, training code):
    every plan on them shares its trained points."""
    return "grid-" + step_key("grid", config=config, upstream={"analysis": analysis_run_id or ""}, data=data,
                              code="models", extra={"ranking": ranked.tolist()})[:10]


def plan_record(plan: CounterfactualPlan, grid: str, analysis_run_id: str | None,
                validation: dict[str, str]) -> dict:
    """What a plan is, as stored on its run (tag ``plan``): a validated plan, its grid, and the
    digests of the validation split and halves it ranks and selects on."""
    return {"orders": list(plan.orders), "ks": list(plan.ks), "n_seeds": plan.seeds, "grid_id": grid,
            "analysis_run_id": analysis_run_id or "", **validation}


def plan_key(record: dict) -> str:
    """The step key of a :func:`plan_record`: the same command resumes the same plan, another plan is new."""
    return step_key("counterfactual", upstream={"grid": record["grid_id"]}, extra=record)


def plan_id(record: dict) -> str:
    """``cf-<10 hex>`` of :func:`plan_key`: the counterfactual run's id (tag ``counterfactual_id``)."""
    return "cf-" + plan_key(record)[:10]


def plan_from_record(record: dict) -> CounterfactualPlan:
    """The plan a record stores (the record keeps the key ``n_seeds``, as stored runs have it)."""
    return CounterfactualPlan(tuple(record["orders"]), tuple(int(k) for k in record["ks"]), int(record["n_seeds"]))
