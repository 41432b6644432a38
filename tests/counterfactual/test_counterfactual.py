"""Counterfactual grids: removal sets, statistics, selection on validation, and a real grid on
synthetic data with planted structure (real MLflow store, real training)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from transfer_core.config import ConfigError, build_config
from transfer_core.counterfactual import (FULL, SELECTION_ARTIFACT, SUMMARY_ARTIFACT, TABLE_ARTIFACT,
                                          CounterfactualPlan, Selection, log_report, ranking_order, removal_set,
                                          run_counterfactual, select, summarize, t_interval)
from transfer_core.counterfactual.report import PLOT_ARTIFACT
from transfer_core.counterfactual.gate import FIRST_SHOWN_TAG, finished_points, recompute_selection
from transfer_core.counterfactual.looks import LookLedger
from transfer_core.counterfactual.settings import EvidenceRule
from transfer_core.counterfactual.summary import RULE_VERSION, contrasts, paired_differences
from transfer_core.data.synthetic import PLANTED, PLANTED_TARGET, SOURCE_CLASSES, TARGET_CLASSES
from transfer_core.execute import ExecutorSettings
from transfer_core.track import artifact_path
from support import store_context

NAMES = [f"c{i}" for i in range(8)]


def ranking_of(influence, names=NAMES) -> pd.DataFrame:
    """An analysis-style table (shuffled rows, as a CSV may come) for the given influences."""
    table = pd.DataFrame({"class_index": range(len(influence)), "class_name": names, "influence": influence})
    return table.sample(frac=1.0, random_state=0)


# ---- removal sets -------------------------------------------------------------------------------

def test_removal_sets_follow_the_sign_convention():
    influence = np.array([0.3, -0.5, 0.1, -0.2, 0.0, 0.7, -0.1, 0.2])
    ranked = ranking_order(ranking_of(influence), NAMES)
    naive = sorted(range(8), key=lambda c: -influence[c])  # most helpful first
    assert ranked.tolist() == naive
    for k in range(1, 8):
        assert set(removal_set("top", k, 0, ranked)) == set(naive[:k])  # the k largest influences
        assert set(removal_set("bottom", k, 0, ranked)) == set(naive[::-1][:k])  # the k most negative
    assert removal_set("bottom", 2, 0, ranked).tolist() == [1, 3]
    assert removal_set("top", 0, 0, ranked).size == 0


def test_random_removals_are_seeded_nested_and_differ_between_seeds():
    ranked = np.arange(8)
    sets = [set(removal_set("random", k, seed=1, ranked=ranked)) for k in range(1, 8)]
    assert all(a < b for a, b in zip(sets, sets[1:]))  # nested as k grows
    assert all(len(s) == k for k, s in enumerate(sets, start=1))
    again = removal_set("random", 4, seed=1, ranked=ranked)
    assert again.tolist() == sorted(sets[3])
    others = {tuple(removal_set("random", 4, seed=s, ranked=ranked)) for s in range(6)}
    assert len(others) > 1


def test_ranking_is_checked_against_the_source():
    with pytest.raises(ConfigError, match="covers 7 classes but the source has 8"):
        ranking_order(ranking_of(np.zeros(7), NAMES[:7]), NAMES)
    with pytest.raises(ConfigError, match="lacks column"):
        ranking_order(pd.DataFrame({"class_index": range(8)}), NAMES)
    wrong = ranking_of(np.zeros(8), NAMES[::-1])
    with pytest.raises(ConfigError, match="analyse a sweep of the same source"):
        ranking_order(wrong, NAMES)


def test_plan_validation_and_points():
    plan = CounterfactualPlan(("top", "bottom", "top"), (10, 0, 5), 2).validate(20)  # normalised when made
    assert plan.ks == (0, 5, 10) and plan.orders == ("top", "bottom")
    points = plan.points()
    assert points[:2] == [(FULL, 0, 0), (FULL, 0, 1)]  # k = 0 once per seed, shared by all orders
    assert len(points) == 2 + 2 * 2 * 2 and len(set(points)) == len(points)
    assert CounterfactualPlan(("random",), (3,), 1).validate(5).ks == (0, 3)
    assert CounterfactualPlan(ks="5,10", orders="bottom").ks == (0, 5, 10)  # as the command line gives them
    for bad, message in [(dict(orders=("worst",)), "orders has an unknown value 'worst'; choose from bottom"),
                         (dict(orders=()), "give at least one removal order"),
                         (dict(ks=(-1,)), "ks must be at least 0, got -1"),
                         (dict(ks="0,five"), "ks must be a comma-separated list of integers"),
                         (dict(seeds=0), "seeds must be at least 1, got 0")]:
        with pytest.raises(ConfigError, match=message):
            CounterfactualPlan(**bad)
    with pytest.raises(ConfigError, match="would remove every one of the 8"):
        CounterfactualPlan(ks=(0, 8)).validate(8)


# ---- statistics and selection -------------------------------------------------------------------

def test_t_interval_matches_scipy():
    x = np.array([0.61, 0.65, 0.58, 0.70])
    mean, low, high = t_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert mean == pytest.approx(x.mean()) and (low, high) == pytest.approx(ref)
    assert np.isnan(t_interval([0.5])[1])


def grid_table(acc: dict[tuple[str, int], list[tuple[float, float, float]]]) -> pd.DataFrame:
    """A run table from {(order, k): [(val, selection-half val, test) per seed]}."""
    rows = [{"order": o, "k": k, "seed": s, "run_id": f"{o}-{k}-{s}", "removed": "" if k == 0 else "a;b",
             "target_val_acc": v, "select_acc": h, "target_test_acc": t, "source_acc": 0.5}
            for (o, k), values in acc.items() for s, (v, h, t) in enumerate(values)]
    return pd.DataFrame(rows)


def test_summary_pairs_differences_by_seed():
    table = grid_table({(FULL, 0): [(0.5, 0.5, 0.50), (0.6, 0.6, 0.70)], ("bottom", 2): [(0.6, 0.6, 0.55),
                                                                                           (0.7, 0.7, 0.74)]})
    diffs = paired_differences(table, "bottom", 2)
    assert diffs == pytest.approx([0.05, 0.04])  # per seed, not mean minus mean of shuffled seeds
    row = summarize(table).set_index(["order", "k"]).loc[("bottom", 2)]
    assert row.test_diff == pytest.approx(0.045)
    ref = stats.t.interval(0.95, 1, loc=0.045, scale=stats.sem([0.05, 0.04]))
    assert (row.diff_ci_low, row.diff_ci_high) == pytest.approx(ref)


def test_k_is_chosen_on_the_selection_half_never_on_test():
    table = grid_table({
        (FULL, 0): [(0.60, 0.60, 0.60), (0.62, 0.62, 0.61), (0.61, 0.60, 0.60)],
        ("bottom", 2): [(0.70, 0.70, 0.58), (0.72, 0.71, 0.57), (0.71, 0.72, 0.58)],  # best on the selection half
        ("bottom", 4): [(0.95, 0.65, 0.90), (0.96, 0.66, 0.91), (0.95, 0.66, 0.90)],  # best on test and whole val
        ("top", 2): [(0.90, 0.90, 0.90)] * 3, ("random", 2): [(0.90, 0.90, 0.90)] * 3,  # controls: never candidates
    })
    chosen = select(table)
    assert (chosen.order, chosen.k, chosen.is_champion) == ("bottom", 2, True)
    assert chosen.model_run_id == "bottom-2-2" and chosen.full_run_id == "full-0-1"  # best selection-half seed
    assert chosen.test_acc == pytest.approx(0.5767, abs=1e-4) and chosen.test_diff == pytest.approx(-0.0267, abs=1e-4)
    assert chosen.removed == ["a", "b"] and chosen.n_candidates == 2
    assert Selection.from_json(chosen.to_json()).to_json() == chosen.to_json()


def test_a_champion_needs_an_interval_above_zero_over_enough_seeds():
    gains = [0.030, 0.032, 0.034]  # a consistent gain on the selection half
    table = grid_table({(FULL, 0): [(0.6, 0.6, 0.6)] * 3,
                        ("bottom", 1): [(0.6, 0.6 + g, 0.6) for g in gains],
                        ("bottom", 2): [(0.6, 0.6 - g, 0.6) for g in gains]})
    chosen = select(table)
    level = 1 - 0.05 / 2 / 2  # the first look spends half of 5%, Bonferroni over the two candidates
    low = stats.t.interval(level, 2, loc=np.mean(gains), scale=stats.sem(gains))[0]
    assert chosen.level == pytest.approx(level) and chosen.select_diff_ci_low == pytest.approx(low)
    assert chosen.k == 1 and chosen.is_champion and low > 0.015  # 98.75% CI [+0.019, +0.045]
    assert chosen.look == 1 and chosen.rule_version == RULE_VERSION and chosen.look_alpha == pytest.approx(0.025)
    later = select(table, look=3, earlier_looks=["x", "y"])  # a third look may spend 5% / 8, over 2 candidates
    assert later.level == pytest.approx(1 - 0.05 / 8 / 2) and later.earlier_looks == ["x", "y"]
    assert later.select_diff_ci_low < chosen.select_diff_ci_low
    noisy = grid_table({(FULL, 0): [(0.6, 0.6, 0.6)] * 3,
                        ("bottom", 1): [(0.6, 0.6 + g, 0.6) for g in (0.08, -0.05, 0.02)]})
    verdict = select(noisy)
    assert verdict.k == 1 and not verdict.is_champion and "includes zero" in verdict.reason
    two_seeds = grid_table({(FULL, 0): [(0.6, 0.6, 0.6)] * 2, ("bottom", 1): [(0.7, 0.7, 0.7), (0.8, 0.8, 0.8)]})
    verdict = select(two_seeds)
    assert not verdict.is_champion and "2 seeds are too few" in verdict.reason
    with pytest.raises(ConfigError, match="min_seeds must be at least 3, got 2"):
        EvidenceRule(min_seeds=2)
    only_full = grid_table({(FULL, 0): [(0.6, 0.6, 0.6)] * 3})
    assert select(only_full).k == 0 and not select(only_full).is_champion


def test_looking_again_and_again_keeps_false_champions_below_five_percent():
    """Under no effect, a user who keeps adding seeds (a new plan, so a new look, each time) until the
    interval clears zero: with the rule's spending the false-champion rate stays below 5%; giving every
    look the whole 5% would not. Seeded simulation of 4,000 users x 6 looks (3 to 8 seeds, the earlier
    seeds reused by later looks); measured: 1.5% with spending, 7.6% without. Margins: < 3.5% and > 6%."""
    rule = EvidenceRule()
    rng = np.random.default_rng(0)
    gains = rng.standard_normal((4000, 8))  # paired gains per seed, true mean zero

    def false_champions(level_of_look) -> float:
        passed = np.zeros(len(gains), dtype=bool)
        for look, n in enumerate(range(3, 9), start=1):
            x = gains[:, :n]
            half = stats.t.ppf(1 - (1 - level_of_look(look)) / 2, n - 1) * x.std(axis=1, ddof=1) / np.sqrt(n)
            passed |= x.mean(axis=1) - half > 0
        return float(passed.mean())

    spent = false_champions(lambda look: 1 - rule.look_alpha(look))
    naive = false_champions(lambda look: rule.confidence)
    print(f"false champions: {spent:.3f} with spending, {naive:.3f} without")
    assert spent < 0.035 and naive > 0.06
    assert sum(rule.look_alpha(j) for j in range(1, 30)) < 1 - rule.confidence


def test_contrasts_are_paired_tests_that_fail_when_only_the_means_differ():
    """top - random: means 2 points apart, but the per-seed differences disagree in sign, so the paired
    interval includes zero; bottom - top: consistent per seed, so it excludes zero. Bonferroni over every
    (contrast, k)."""
    table = grid_table({
        (FULL, 0): [(0.5, 0.5, 0.50), (0.5, 0.5, 0.60), (0.5, 0.5, 0.55), (0.5, 0.5, 0.52)],
        ("top", 2): [(0.5, 0.5, 0.40), (0.5, 0.5, 0.62), (0.5, 0.5, 0.47), (0.5, 0.5, 0.53)],
        ("random", 2): [(0.5, 0.5, 0.52), (0.5, 0.5, 0.58), (0.5, 0.5, 0.56), (0.5, 0.5, 0.44)],
        ("bottom", 2): [(0.5, 0.5, 0.43), (0.5, 0.5, 0.65), (0.5, 0.5, 0.50), (0.5, 0.5, 0.56)],
        ("top", 4): [(0.5, 0.5, 0.45)] * 4, ("random", 4): [(0.5, 0.5, 0.50)] * 4, ("bottom", 4): [(0.5, 0.5, 0.5)] * 4,
    })
    rows = contrasts(table).set_index(["contrast", "k"])
    top_random = rows.loc[("top - random", 2)]
    assert top_random["mean"] == pytest.approx(-0.02) and top_random.sign == 0  # means differ, pairs do not agree
    assert top_random.level == pytest.approx(1 - 0.05 / 12) and top_random.family == 12  # 6 contrasts x 2 ks
    diffs = np.array([0.43, 0.65, 0.50, 0.56]) - np.array([0.40, 0.62, 0.47, 0.53])
    ref = stats.t.interval(1 - 0.05 / 12, 3, loc=diffs.mean(), scale=stats.sem(diffs))
    assert rows.loc[("bottom - top", 2)].sign == 1
    assert (rows.loc[("bottom - top", 2)].ci_low, rows.loc[("bottom - top", 2)].ci_high) == pytest.approx(ref)
    assert set(rows.index.get_level_values(0)) == {"top - random", "bottom - random", "bottom - top",
                                                  "bottom - full", "top - full", "random - full"}


# ---- a real grid on planted data ----------------------------------------------------------------

def planted_ranking() -> pd.DataFrame:
    """The ranking the planted structure implies (synthetic.py): helpful and leaked help the
    target; the misleading class hurts it; the other classes lie in between."""
    influence = np.zeros(len(SOURCE_CLASSES))
    influence[PLANTED["helpful"]], influence[PLANTED["leaked"]] = 0.3, 0.2
    influence[PLANTED["misleading"]] = -0.3
    return ranking_of(influence, SOURCE_CLASSES)


# Seeds of the planted grid. On this data a model's test accuracy is dominated by whether it takes the
# watermark shortcut (about 0.5 if it does, up to 1.0 if not), and which seeds do depends on the CPU's
# float rounding, not only on the seed: removing ``misleading`` gains +0.23 on average per seed, sd 0.20
# (16 seeds on each of torch's default and avx512 kernel paths). Resampling those 32 seeds' four runs,
# the claims of test_planted_effects fail together with 6 seeds about 40% of the time (each of the
# paired "bottom - full" and "bottom - random" intervals alone 35-39%), with 16 seeds 1.9%, with 20
# seeds 0.4%, with 24 seeds 0.09%.
PLANTED_SEEDS = 24


@pytest.fixture(scope="module")
def planted_grid(tmp_path_factory):
    """One grid on the synthetic profile: k in {0, 1}, three orders, :data:`PLANTED_SEEDS` seeds, trained by
    two 1-thread workers (2.5x the runs per minute of one 2-thread worker on a shared 2-core machine)."""
    import mlflow
    from transfer_core.track import get_experiment_id
    root = tmp_path_factory.mktemp("cf")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    grid = Grid(build_config("synthetic"), get_experiment_id(MlflowClient(uri), "cf-test"), uri, root / "looks.jsonl")
    plan = CounterfactualPlan(ks=(0, 1), seeds=PLANTED_SEEDS)
    runs = grid.run(plan, ExecutorSettings(workers=2))
    selection = log_report(MlflowClient(), runs.parent_run_id, runs.table, ledger=grid.ledger)
    yield grid, plan, runs, selection
    mlflow.set_tracking_uri(None)


class Grid:
    """The planted ranking's grid in experiment cf-test."""

    def __init__(self, config, experiment_id, uri, ledger):
        self.config, self.experiment_id, self.uri, self.ledger = config, experiment_id, uri, ledger

    def run(self, plan, execution=None):
        ctx = store_context(self.uri, ledger=self.ledger).with_execution(execution or ExecutorSettings())
        return run_counterfactual(self.config, planted_ranking(), plan, ctx=ctx, experiment="cf-test",
                                  analysis_run_id="a" * 32)


def test_grid_runs_are_tagged_child_runs_with_a_report(planted_grid):
    runner, plan, runs, selection = planted_grid
    client = MlflowClient()
    assert runs.n_trained == len(plan.points()) == PLANTED_SEEDS + 3 * PLANTED_SEEDS
    children = client.search_runs([runner.experiment_id], f"tags.mlflow.parentRunId = '{runs.parent_run_id}'")
    assert len(children) == len(plan.points())
    keys = {(r.data.tags["order"], int(r.data.tags["k"]), int(r.data.tags["seed"])) for r in children}
    assert keys == set(plan.points())
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["analysis_run_id"] == "a" * 32
        assert run.data.tags["transfer_core.kind"] == "counterfactual_run"  # never mixed into a sweep
        removed = json.loads(run.data.tags["removed"])
        mask = np.load(artifact_path(run, "class_mask.npy", MlflowClient()))
        assert sorted(np.flatnonzero(~mask).tolist()) == removed and len(removed) == int(run.data.tags["k"])
        assert artifact_path(run, "model.pt", MlflowClient()).is_file()  # kept for the registry
        assert {k: run.data.params[k] for k in ("order", "k", "seed")} == {  # what the UI's charts can plot
            k: run.data.tags[k] for k in ("order", "k", "seed")}
    source = {(r.data.tags["order"], r.data.tags["k"], r.data.tags["seed"]):
              next(d.dataset for d in r.inputs.dataset_inputs if d.tags[0].value == "pretrain") for r in children}
    full = {source[("full", "0", str(s))].digest for s in range(plan.seeds)}
    assert len(full) == 1 and source[("full", "0", "0")].name == "synthetic-source: 10 of 10 classes"
    bottom, top = source[("bottom", "1", "0")].digest, source[("top", "1", "0")].digest
    assert bottom not in full and bottom != top  # another source, another digest
    assert source[("bottom", "1", "5")].digest == bottom  # the same removal at another seed
    parent = client.get_run(runs.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert "counterfactual_accuracy.png" in parent.data.tags["mlflow.note.content"]
    for name in (TABLE_ARTIFACT, SUMMARY_ARTIFACT, PLOT_ARTIFACT, SELECTION_ARTIFACT):
        assert artifact_path(parent, name, MlflowClient()).stat().st_size > 0
    logged = pd.read_csv(artifact_path(parent, TABLE_ARTIFACT, MlflowClient()))
    assert len(logged) == len(plan.points())
    assert parent.data.metrics["selected_k"] == selection.k
    stored = artifact_path(parent, SELECTION_ARTIFACT, MlflowClient()).read_text()
    assert Selection.from_json(stored).to_json() == selection.to_json()


def test_same_seed_trains_every_point_with_one_training_seed(planted_grid):
    _, _, runs, _ = planted_grid
    client = MlflowClient()
    seeds = {}
    for row in runs.table.itertuples():
        seeds.setdefault(row.seed, set()).add(client.get_run(row.run_id).data.params["subset.seed"])
    assert all(len(s) == 1 for s in seeds.values())  # paired across orders and k
    assert len({next(iter(s)) for s in seeds.values()}) == len(seeds)  # distinct between seeds


def test_resume_trains_only_missing_points(planted_grid):
    runner, plan, runs, _ = planted_grid
    again = runner.run(plan)
    assert again.n_trained == 0 and again.counterfactual_id == runs.counterfactual_id
    assert again.table.run_id.tolist() == runs.table.run_id.tolist()
    grown = CounterfactualPlan(("bottom",), (0, 1, 2), 6)
    more = runner.run(grown, ExecutorSettings(pack=3))  # grid points train in packs too
    assert more.n_trained == 6  # only (bottom, k=2) for six seeds: the rest of the grid is reused
    assert more.counterfactual_id != runs.counterfactual_id and more.grid_id == runs.grid_id  # another plan
    done = finished_points(MlflowClient(), runner.experiment_id, runs.grid_id)
    assert len(done) == len(plan.points()) + 6
    packed = [done[("bottom", 2, seed)] for seed in range(6)]
    assert {run.data.tags["pack_size"] for run in packed} == {"3"} and all(
        artifact_path(run, "model.pt", MlflowClient()).is_file() for run in packed)  # kept for the registry too
    one = done[("bottom", 1, 0)]  # an unpacked point of the same grid logs the same params and inputs
    assert packed[0].data.params.keys() == one.data.params.keys() and packed[0].data.params["k"] == "2"
    assert packed[0].data.params["subset.seed"] == one.data.params["subset.seed"]
    contexts = [{tag.value for i in run.inputs.dataset_inputs for tag in i.tags if tag.key == "mlflow.data.context"}
                for run in (packed[0], one)]
    assert contexts[0] == contexts[1] == {"pretrain", "transfer", "validation", "evaluation"}


def test_a_second_plan_is_a_new_run_and_a_second_look_that_spends_less(planted_grid):
    """More seeds or other ks on the same analysis: a new counterfactual run that reuses the grid's points,
    leaves the first plan's selection as it was, and counts as look 2 at the same selection half."""
    runner, plan, runs, selection = planted_grid
    client = MlflowClient()
    first = client.get_run(runs.parent_run_id)
    stored = artifact_path(first, SELECTION_ARTIFACT, MlflowClient()).read_text()
    second = runner.run(CounterfactualPlan(("bottom",), (0, 1), 5))  # fewer seeds: a subset of the trained points
    assert second.n_trained == 0 and second.counterfactual_id != runs.counterfactual_id
    assert second.grid_id == runs.grid_id and second.parent_run_id != runs.parent_run_id
    again = log_report(client, second.parent_run_id, second.table, ledger=runner.ledger)
    assert again.look == 2 and again.earlier_looks == [runs.parent_run_id]
    assert again.level == pytest.approx(1 - 0.05 / 4)  # one candidate, a quarter of 5%
    assert selection.look == 1  # and the stored selection is untouched:
    assert artifact_path(first, SELECTION_ARTIFACT, MlflowClient()).read_text() == stored
    assert client.get_run(runs.parent_run_id).data.tags[FIRST_SHOWN_TAG] == first.data.tags[FIRST_SHOWN_TAG]
    ledger = LookLedger(runner.ledger)
    recomputed, table = recompute_selection(client, client.get_run(runs.parent_run_id), ledger=ledger)
    assert (recomputed.look, recomputed.is_champion, recomputed.k, recomputed.model_run_id) == (
        1, selection.is_champion, selection.k, selection.model_run_id)
    assert recomputed.select_diff_ci_low == pytest.approx(selection.select_diff_ci_low)
    assert table.run_id.tolist() == runs.table.run_id.tolist()
    log_report(client, runs.parent_run_id, runs.table, ledger=runner.ledger)  # reporting again is not a new look
    assert recompute_selection(client, client.get_run(runs.parent_run_id), ledger=ledger)[0].look == 1
    assert [look.run_id for look in ledger.read()] == [runs.parent_run_id, second.parent_run_id]


def class_margin(run_id: str, target_class: int) -> float:
    """Mean true-class margin of a run on the test images of one target class."""
    outputs = np.load(artifact_path(MlflowClient().get_run(run_id), "target_outputs.npz", MlflowClient()))
    return float(outputs["margin"][outputs["labels"] == target_class].astype(float).mean())


def test_planted_effects(planted_grid):
    """Removing the planted misleading class raises target test accuracy over the full source;
    removing the planted helpful class lowers it, by more than removing a random class.

    :data:`PLANTED_SEEDS` paired seeds, fixed. Whole-target accuracy on this data is dominated by the
    misleading watermark shortcut (the diagonal and rings test images flip between all right and all
    wrong from seed to seed and from CPU to CPU), so the helpful class's effect is also measured where
    it acts, on its own target class. Stated margins; in brackets, what 24 seeds give, resampled from
    32 seeds measured on the default and avx512 kernel paths (median; 1st percentile):
      * misleading removed: mean paired gain >= 10 points (+0.24; +0.14), 95% CI above zero (low end
        +0.15; +0.05); removing it also beats a random removal, 95% CI above zero (+0.16; +0.05);
      * helpful removed: test accuracy below a random removal (by 0.12; 0.05) and the full source
        (0.14; 0.04); on target class "vertical", mean true-class margin at most 3/4 of a random
        removal's (0.25x; 0.37x at the 99th percentile) and at most half of the full source's (0.22x;
        0.34x).
    """
    _, _, runs, _ = planted_grid
    table = runs.table
    summary = summarize(table).set_index(["order", "k"])
    assert table[(table.order == "bottom") & (table.k == 1)].removed.unique().tolist() == ["misleading"]
    assert table[(table.order == "top") & (table.k == 1)].removed.unique().tolist() == ["helpful"]
    full, bottom = summary.loc[(FULL, 0)], summary.loc[("bottom", 1)]
    top, rand = summary.loc[("top", 1)], summary.loc[("random", 1)]
    assert bottom.test_diff >= 0.10 and bottom.diff_ci_low > 0, (
        f"removing misleading: {bottom.test_diff:+.3f}, CI [{bottom.diff_ci_low:+.3f}, {bottom.diff_ci_high:+.3f}]",
        summary)
    assert top.test_mean < rand.test_mean and top.test_mean < full.test_mean, (
        f"without helpful {top.test_mean:.3f}, random removal {rand.test_mean:.3f}, full {full.test_mean:.3f}",
        summary)

    from transfer_core.workflow.publish import claim_verdict
    tests = contrasts(table).set_index("contrast")
    assert (tests.family == 6).all() and tests.level.to_numpy() == pytest.approx(1 - 0.05 / 6)  # one family of six
    for name, least in (("bottom - full", 0.10), ("bottom - random", 0.0)):  # the planted harm, removed
        assert tests.loc[name, "mean"] > least and tests.loc[name, "sign"] != -1, tests
        verdict = claim_verdict(tests.reset_index(), name, 1)
        assert "two-sided 99.17% intervals, Bonferroni over all 6 paired tests of the grid" in verdict
        assert "one-sided test at 0.42%" in verdict and "the opposite holds" not in verdict

    vertical = TARGET_CLASSES.index(PLANTED_TARGET["helpful"])
    margin = {order: np.mean([class_margin(r, vertical) for r in table[table.order == order].run_id])
              for order in (FULL, "top", "random")}
    assert margin["top"] <= 0.75 * margin["random"] and margin["top"] <= 0.5 * margin[FULL], margin


# ---- the command, from an analysis run --------------------------------------------------------

def fake_analysis(client, experiment_id: str, config, folder, **tags) -> str:
    """An analysis run of sweep ``sweep-test`` as ``analyze`` logs one: the planted ranking as its validation
    ranking, and the digests of ``config``'s validation split and halves."""
    from transfer_core.data import load_transfer_data, validation_digests
    val = load_transfer_data(config.data).target_val
    run_id = client.create_run(experiment_id, tags={"transfer_core.kind": "analysis", "sweep_id": "sweep-test",
                                                    **validation_digests(val, config.data.split_seed),
                                                    **tags}).info.run_id
    (folder / "class_influence_validation.csv").write_text(planted_ranking().to_csv(index=False))
    client.log_artifact(run_id, str(folder / "class_influence_validation.csv"))
    client.set_terminated(run_id)
    return run_id


def test_cli_checks_the_ranking_of_the_latest_analysis_with_the_sweeps_recipe(tracking, tmp_path):
    from click.testing import CliRunner
    from transfer_core.cli import main
    from transfer_core.execute import SubsetRunner

    cli = CliRunner()
    missing = cli.invoke(main, ["counterfactual", "--experiment", "cli", "--ks", "0,1", "--seeds", "1"])
    assert missing.exit_code != 0 and "has no FINISHED analysis run" in missing.output

    # a one-run "sweep" with a non-default recipe, and an analysis run of it
    runner = SubsetRunner(build_config("synthetic", {"transfer.epochs": "7"}), "cli", store_context())
    sweep_run_id, _ = runner.run(0, tags={"sweep_id": "sweep-test"})
    client = MlflowClient()
    from transfer_core.data import load_transfer_data, validation_digests
    digests = validation_digests(runner.data.target_val, runner.config.data.split_seed)
    analysis = client.create_run(runner.experiment_id, tags={"transfer_core.kind": "analysis",
                                                             "sweep_id": "sweep-test", **digests}).info.run_id
    (tmp_path / "class_influence.csv").write_text(planted_ranking().to_csv(index=False))
    client.log_artifact(analysis, str(tmp_path / "class_influence.csv"))
    client.set_terminated(analysis)
    only_test = cli.invoke(main, ["counterfactual", "--experiment", "cli", "--ks", "0,1", "--seeds", "1"])
    assert only_test.exit_code != 0 and "so that no class is chosen on the test split" in only_test.output
    (tmp_path / "class_influence_validation.csv").write_text(planted_ranking().to_csv(index=False))
    client.log_artifact(analysis, str(tmp_path / "class_influence_validation.csv"))

    bad = cli.invoke(main, ["counterfactual", "--experiment", "cli", "--analysis", sweep_run_id])
    assert bad.exit_code != 0 and "is a subset_run run, not an analysis run" in bad.output
    bad = cli.invoke(main, ["counterfactual", "--experiment", "cli", "--ks", "0,10"])
    assert bad.exit_code != 0 and "would remove every one of the 10 source classes" in bad.output
    other_split = cli.invoke(main, ["counterfactual", "--experiment", "cli", "--ks", "0,1", "--seeds", "1",
                                    "--set", "data.split_seed=1", "--no-progress"])
    assert other_split.exit_code == 1 and "are not the ones analysis" in other_split.output
    assert len(other_split.output.strip().splitlines()) == 1, other_split.output  # one sentence
    moved = validation_digests(load_transfer_data(build_config("synthetic", {"data.split_seed": "1"}).data).target_val,
                               1)  # the synthetic target ships its own validation split: only the halves move
    assert moved["validation_digest"] == digests["validation_digest"]
    assert moved["selection_half_digest"] != digests["selection_half_digest"]
    assert client.search_runs([runner.experiment_id], "tags.`transfer_core.kind` LIKE 'counterfactual%'") == []

    result = cli.invoke(main, ["counterfactual", "--experiment", "cli", "--orders", "bottom", "--ks", "0,1",
                               "--seeds", "1", "--workers", "2", "--no-progress"])  # two worker processes
    assert result.exit_code == 0, result.output
    assert "2 runs (2 trained here, 0 reused or trained elsewhere)" in result.output
    parent = client.search_runs([runner.experiment_id], "tags.`transfer_core.kind` = 'counterfactual'")[0]
    assert parent.data.tags["analysis_run_id"] == analysis and parent.data.tags["source_sweep_id"] == "sweep-test"
    assert parent.data.params["transfer.epochs"] == "7"  # the sweep's recipe, not the profile's
    children = client.search_runs([runner.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["removed"] for r in children) == ["[1]", "[]"]  # misleading is the bottom class
    again = cli.invoke(main, ["counterfactual", "--experiment", "cli", "--orders", "bottom", "--ks", "0,1",
                              "--seeds", "1", "--no-progress"])
    assert "(0 trained here, 2 reused or trained elsewhere)" in again.output


def test_two_counterfactual_commands_at_once_never_train_a_point_twice(new_store, tmp_path):
    """Two commands on one grid, started together: the points are shared out, none trained twice."""
    import os
    import re
    import subprocess
    import sys

    from transfer_core.execute import SubsetRunner

    runner = SubsetRunner(build_config("synthetic", {"pretrain.epochs": "1", "transfer.epochs": "2"}), "both",
                          store_context())
    runner.run(0, tags={"sweep_id": "sweep-test"})
    client = MlflowClient()
    fake_analysis(client, runner.experiment_id, runner.config, tmp_path)

    command = [sys.executable, "-m", "transfer_core.cli", "counterfactual", "--experiment", "both", "--orders",
               "bottom,random", "--ks", "0,1,2", "--seeds", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    trained = [int(re.search(r"(\d+) trained here", out).group(1)) for out, _ in results]
    n_points = 2 + 2 * 2 * 2  # the full source per seed, then (order, k > 0, seed)
    assert sum(trained) == n_points and min(trained) > 0, results

    children = client.search_runs([runner.experiment_id], "tags.`transfer_core.kind` = 'counterfactual_run'")
    finished = [r for r in children if r.info.status == "FINISHED"]
    keys = [(r.data.tags["order"], r.data.tags["k"], r.data.tags["seed"]) for r in finished]
    assert len(keys) == len(set(keys)) == n_points
    assert all(r.data.tags.get("superseded") == "true" and not r.data.params
               for r in children if r.info.status != "FINISHED")  # withdrawn claims never trained
    parents = [r for r in client.search_runs([runner.experiment_id], "tags.`transfer_core.kind` = 'counterfactual'")
               if r.data.tags.get("superseded") != "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in finished} == {parents[0].info.run_id}
