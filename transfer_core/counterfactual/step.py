"""The ``counterfactual`` step: from an analysis run to a finished, reported plan.

Resolves the analysis run (latest FINISHED when not given), its class ranking and the
config its sweep was trained with; checks that this config gives the validation split and
halves the analysis ranked on (their digests, recorded by the analysis), and refuses before
recording anything when it does not; trains every missing point of the plan's grid
(:mod:`~transfer_core.counterfactual.grid`) through the one executor (:mod:`transfer_core.execute`),
and logs the report (:mod:`~transfer_core.counterfactual.report`) on the plan's run. Every point
is claimed through the tracking store, so two commands on the same grid never train a point
twice, and ``executor="ray"`` spreads the grid over a Ray cluster.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from transfer_core.analysis import class_ranking, find_analysis_run
from transfer_core.config import ConfigError, Provenance, RunConfig, resolve_config
from transfer_core.counterfactual.gate import PLAN_TAG, finished_points, grid_table
from transfer_core.counterfactual.grid import (grid_id, plan_id, plan_key, plan_record,
                                               ranking_order, removal_set)
from transfer_core.counterfactual.looks import LOOK_KEY_TAG, LookLedger
from transfer_core.counterfactual.report import log_report
from transfer_core.counterfactual.settings import CounterfactualPlan, EvidenceRule
from transfer_core.counterfactual.summary import Selection
from transfer_core.data import (DataDirs, data_digest, load_source, load_transfer_data, selection_half_key,
                                validation_digests)
from transfer_core.execute import Context, Job, Task, resolve_pack, run_tasks
from transfer_core.track import DEFAULT_EXPERIMENT, get_experiment_id, latest_run, run_config, set_tags
from transfer_core.track.claims import settle_parent
from transfer_core.track.runs import COUNTERFACTUAL, COUNTERFACTUAL_RUN, SUBSET_RUN, SWEEP
from transfer_core.track.steps import step_tags
from transfer_core.tune import TunedRecipe

log = logging.getLogger(__name__)
VALIDATION_KEYS = ("validation_digest", "ranking_half_digest", "selection_half_digest")
PROVENANCE_TAG = "config_provenance"


@dataclass
class CounterfactualRuns:
    """What :func:`run_counterfactual` returns: the plan's run and one row per point."""

    parent_run_id: str
    counterfactual_id: str  # the plan's id, cf-<hash>
    grid_id: str  # the grid its points belong to, grid-<hash>, shared by every plan on the same ranking
    table: pd.DataFrame  # order, k, seed, run_id, removed, target_val_acc, target_test_acc, source_acc, select_acc
    class_names: list[str]
    n_trained: int  # runs trained by this call (the rest were reused or trained by another command)
    plan: dict  # the plan record (grid.plan_record)


def grid_tasks(points: list[tuple[str, int, int]], ranked: np.ndarray, random_seed: int, grid: str,
               parent_run_id: str, common: dict[str, str]) -> list[Task]:
    """One task per grid point: the full source minus the point's removed classes, seed index = seed."""
    tasks = []
    for order, k, seed in points:
        removed = removal_set(order, k, seed, ranked, random_seed)
        mask = np.ones(len(ranked), dtype=bool)
        mask[removed] = False
        key = (("grid_id", grid), ("order", order), ("k", str(k)), ("seed", str(seed)))
        tags = (*common.items(), ("removed", json.dumps(removed.tolist())[:4900]))
        params = (("order", order), ("k", str(k)), ("seed", str(seed)))  # params: the UI's charts can plot them
        tasks.append(Task(COUNTERFACTUAL_RUN, key, seed, point_name(order, k, seed, grid), parent_run_id,
                          tuple(mask.tolist()), tags, params))
    return tasks


def point_name(order: str, k: int, seed: int, grid: str) -> str:
    """A grid point's run name, what tells points apart first: ``bottom k25 s0 · grid-16d2``."""
    return f"{order} k{k} s{seed} · {grid[:9]}"


def check_validation(config: RunConfig, expected: dict[str, str] | None, analysis_run_id: str | None,
                     dirs: DataDirs = DataDirs()) -> dict[str, str]:
    """The digests of ``config``'s validation split and halves, and the selection half's key
    (``look_key``: its images, whatever the resolution); refused when the digests differ from ``expected``.

    ``expected`` are the digests the analysis recorded (tags). A config that carves another
    validation split (another ``data.split_seed``, ``val_fraction`` or ``target_train_images``,
    another data root) would select on images the ranking may have seen, so it is refused.
    """
    val = load_transfer_data(config.data, dirs).target_val
    found = validation_digests(val, config.data.split_seed)
    found[LOOK_KEY_TAG] = selection_half_key(config.data, dirs)  # what a look at the selection half sees
    if expected is None:
        return found
    missing = [k for k in VALIDATION_KEYS if not expected.get(k)]
    if missing:
        raise ConfigError(f"analysis run {analysis_run_id} records no digest of its validation split and halves, so "
                          "the halves it ranked on cannot be checked; analyse the sweep again with this version "
                          "(`transfer-core analyze --recompute`) and use that analysis")
    if any(found[k] != expected[k] for k in VALIDATION_KEYS):
        d = config.data
        raise ConfigError(f"this counterfactual's validation split or halves (data.split_seed={d.split_seed}, "
                          f"val_fraction={d.val_fraction}, target_train_images={d.target_train_images}: validation "
                          f"{found['validation_digest']}) are not the ones analysis {analysis_run_id} ranked on "
                          f"(validation {expected['validation_digest']}); drop the --profile or --set that changes "
                          "data.* (or the other --data-root), so the selection half is the analysis's own")
    return found


def run_counterfactual(config: RunConfig, ranking: pd.DataFrame, plan: CounterfactualPlan, *,
                       ctx: Context, experiment: str = DEFAULT_EXPERIMENT,
                       analysis_run_id: str | None = None, expected_validation: dict[str, str] | None = None,
                       source_sweep_id: str | None = None, invocation_run_id: str | None = None,
                       provenance: Provenance | None = None) -> CounterfactualRuns:
    """Train every missing point of the plan on ``ranking`` (a ``class_influence.csv`` table) and log it.

    The plan (orders, ks, seeds, analysis run, validation digests) is a record: the same plan
    resumes its run; another plan is another run, whose points reuse the FINISHED points of the
    same grid. ``expected_validation`` are the digests the analysis recorded; the config's own
    must equal them (:func:`check_validation`). Each point keeps its transferred model
    (``model.pt``) so the registry can log the chosen one without retraining. Points that fail
    are retried by the next call; this one raises after the others have run.
    """
    names = load_source(config.data, "train", ctx.dirs).class_names
    plan = plan.validate(len(names))
    ranked = ranking_order(ranking, names)
    validation = check_validation(config, expected_validation, analysis_run_id, ctx.dirs)
    client = ctx.client
    experiment_id = get_experiment_id(client, experiment)
    # a pack that cannot fit is refused before anything is recorded
    pack = resolve_pack(config, ctx.execution, ctx.dirs)
    grid = grid_id(config, ranked, analysis_run_id, data_digest(config.data, ctx.dirs))
    record = plan_record(plan, grid, analysis_run_id, validation)
    cf_id = plan_id(record)
    common = {"grid_id": grid, "analysis_run_id": analysis_run_id or "", "source_sweep_id": source_sweep_id or ""}
    provenance = provenance or Provenance("?")
    extra = {**common, **validation, PLAN_TAG: json.dumps(record, sort_keys=True), **step_tags(plan_key(record)),
             PROVENANCE_TAG: provenance.to_json(), **({"tune_run_id": provenance.tune_run_id}
                                                      if provenance.tune_run_id else {})}
    parent = settle_parent(client, experiment_id, COUNTERFACTUAL, {"counterfactual_id": cf_id},
                           params=config.to_params(), run_name=run_name(cf_id), invocation_run_id=invocation_run_id,
                           extra_tags=extra)
    client.update_run(parent, status="RUNNING")
    set_tags(client, parent, {"orders": ",".join(plan.orders), "ks": ",".join(map(str, plan.ks)),
                              "n_seeds": plan.seeds})
    done = finished_points(client, experiment_id, grid)
    todo = [p for p in plan.points() if p not in done]
    log.info("counterfactual %s (grid %s): %d of %d runs already FINISHED", cf_id, grid,
             len(plan.points()) - len(todo), len(plan.points()))
    job = Job(config, experiment, ctx.tracking_uri, ctx.dirs, log_checkpoint=True, pack=pack,
              compile=ctx.execution.compile)
    tasks = grid_tasks(todo, ranked, config.sweep_seed, grid, parent, common)
    if pack > 1:  # points that keep as many classes pack together (their step counts and heads match)
        tasks.sort(key=lambda task: sum(task.mask))
    outcomes = run_tasks(job, tasks, ctx.execution, n_total=len(plan.points()),
                         n_done=len(plan.points()) - len(todo), progress=ctx.progress, desc=f"counterfactual {cf_id}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        client.set_terminated(parent, status="FAILED")
        raise ConfigError(f"counterfactual {cf_id}: {len(failed)} of {len(todo)} runs failed (first: "
                          f"{failed[0].task.name}: "
                          f"{failed[0].error}); run the same command again to retry them")
    return CounterfactualRuns(parent, cf_id, grid, grid_table(client, experiment_id, record), names,
                              sum(o.status == "trained" for o in outcomes), record)


def sweep_run(client: MlflowClient, experiment_id: str, sweep_id: str):
    """A FINISHED subset run of sweep ``sweep_id``: the config it was trained with is the counterfactual's base."""
    found = latest_run(client, experiment_id, SUBSET_RUN, sweep_id=sweep_id)
    if found is None:
        raise ConfigError(f"sweep {sweep_id!r} has no FINISHED subset run in this experiment; "
                          "run or resume the sweep first")
    return found


@dataclass
class CounterfactualOutcome:
    runs: CounterfactualRuns
    selection: Selection
    analysis_run_id: str
    sweep_id: str
    warnings: list[str]  # e.g. an unstable ranking: one sentence each, for the command to print




def stability_warning(split_half: float, threshold: float, analysis_run_id: str) -> list[str]:
    """One sentence when the ranking a step relies on is unstable (split-half Spearman below ``threshold``)."""
    if not np.isfinite(split_half) or split_half >= threshold:
        return []
    return [f"the class ranking of analysis {analysis_run_id} is unstable: two disjoint halves of its runs rank the "
            f"classes with Spearman {split_half:.2f} (below {threshold}), so the removed classes are largely noise; "
            "grow the sweep (--n-models) and analyse it again for a ranking worth acting on"]


def counterfactual_from_analysis(experiment: str, plan: CounterfactualPlan, *, ctx: Context,
                                 analysis_run_id: str | None = None, profile: str | None = None,
                                 overrides: dict | None = None, recipe: TunedRecipe | None = None,
                                 invocation_run_id: str | None = None,
                                 rule: EvidenceRule = EvidenceRule()) -> CounterfactualOutcome:
    """Run (or resume) the counterfactual plan of an analysis run and report it.

    The classes are removed by the analysis's validation ranking (fitted on the ranking half
    of the validation split), never by its test-split ranking. The models are trained with the
    config of the analysed sweep (so the check uses the recipe the influences were fitted on),
    or with ``profile`` when given; ``overrides`` (dotted fields) and then a tuned ``recipe`` apply
    on top (:func:`transfer_core.config.resolve_config`). The run records where its config came
    from, the tune run included (the sweep's, when the config is the sweep's).
    """
    ledger = LookLedger(ctx.ledger)  # refused before anything trains when the context has none
    client = ctx.client
    experiment_id = get_experiment_id(client, experiment)
    analysis, ranking = ranking_run(client, experiment_id, analysis_run_id, plan.ranking)
    sweep_id = analysis.data.tags.get("sweep_id", "")
    if not profile and not sweep_id:
        raise ConfigError(f"analysis run {analysis.info.run_id} names no sweep_id, so its recipe is unknown; "
                          "pass --profile")
    base = None if profile else sweep_run(client, experiment_id, sweep_id)
    tune_run_id = recipe.run_id if recipe else ""
    if base is not None and not recipe:  # the sweep's config carries the sweep's tuned recipe
        parent = latest_run(client, experiment_id, SWEEP, status=None, sweep_id=sweep_id)
        tune_run_id = parent.data.tags.get("tune_run_id", "") if parent is not None else ""
    config, provenance = resolve_config(profile, overrides, base=None if base is None else run_config(base),
                                        base_run_id=None if base is None else base.info.run_id,
                                        recipe=recipe.overrides if recipe else None, tune_run_id=tune_run_id)
    expected = {k: analysis.data.tags.get(k, "") for k in VALIDATION_KEYS}
    runs = run_counterfactual(config, ranking, plan, ctx=ctx, experiment=experiment,
                              analysis_run_id=analysis.info.run_id, expected_validation=expected,
                              source_sweep_id=sweep_id, invocation_run_id=invocation_run_id, provenance=provenance)
    split_half = analysis.data.metrics.get("selection_split_half_spearman", float("nan"))
    set_tags(client, runs.parent_run_id, {"ranking_split": "validation-ranking-half",
                                          "ranking_split_half": f"{split_half:.4f}", "ranking_source": plan.ranking})
    selection = log_report(client, runs.parent_run_id, runs.table, rule=rule, ranking_split_half=split_half,
                           name=run_name(runs.counterfactual_id), invocation_run_id=invocation_run_id, ledger=ledger)
    warnings = stability_warning(split_half, rule.stability_threshold, analysis.info.run_id)
    return CounterfactualOutcome(runs, selection, analysis.info.run_id, sweep_id, warnings)


def ranking_run(client: MlflowClient, experiment_id: str, run_id: str | None, ranking: str):
    """The run whose validation ranking chooses the removals (``ranking``: ``retraining``, an analysis run;
    ``attribution``, an attribution run), given or the experiment's latest FINISHED one, and that ranking."""
    if ranking == "attribution":
        from transfer_core.attribution.step import SELECTION_ARTIFACT, find_attribution_run
        from transfer_core.track import artifact_path
        try:
            run = find_attribution_run(client, experiment_id, run_id)
        except ConfigError as e:
            raise ConfigError(f"{e} (--ranking attribution takes the ranking of a `transfer-core attribute` run)") \
                from None
        return run, pd.read_csv(artifact_path(run, SELECTION_ARTIFACT, client))
    try:
        run = find_analysis_run(client, experiment_id, run_id)
    except ConfigError as e:
        if "attribution run" in str(e):
            raise ConfigError(f"{e}; or pass --ranking attribution to check an attribution run's ranking") from None
        raise
    return run, class_ranking(client, run.info.run_id, "validation")


def run_name(cf_id: str) -> str:
    """The grid's parent run name in the UI: ``counterfactual-<hash>`` for id ``cf-<hash>``."""
    return f"counterfactual-{cf_id.removeprefix('cf-')}"
