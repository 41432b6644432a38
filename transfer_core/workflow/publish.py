"""Publish an experiment's results as a folder of figures, tables and one ``RESULTS.md``.

``publish(experiment, out_dir)`` reads the latest FINISHED analysis run of the experiment
(or the one given), the latest FINISHED counterfactual run made from it, and the tune run
whose recipe the sweep used, and writes into ``out_dir``:

- copies of their figures and CSVs (heatmap, ranking, rank stability, counterfactual curve,
  sub-populations, near duplicates, per-target-class image grids);
- ``subpopulation_example.png``: one sub-population (target examples grouped under the
  source class that most influences them) next to images of that source class;
- ``RESULTS.md``: every table the results page (docs/results.md) quotes, each naming the run and
  artifact it comes from, so every number can be traced to a logged MLflow run; and the
  verdicts, each written from the test that fits its claim (:func:`verdicts`): paired
  contrasts per k with their correction, the champion gate, and which method found each leak.

A counterfactual ranked by gradient attribution (tag ``ranking_source`` = ``attribution``; its
``analysis_run_id`` tag names the attribution run) is published without an analysis when the
experiment has none, or when ``analysis_run_id`` names the attribution run
(:func:`publish_attribution`): the runs table, the attribution ranking (validation ranking half),
its figure and top images, and the same accuracy, counterfactual and verdict sections
(:func:`counterfactual_sections`, :func:`counterfactual_verdicts`).

Sign convention: positive influence = including the source class helps the target. Every model
keeps exactly half the classes, so the difference-of-means influences average to about zero:
a "detrimental" class is one *less helpful than the average class*; whether removing it helps in
absolute terms is what the counterfactual tests (bottom - full).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from transfer_core.analysis import find_analysis_run
from transfer_core.analysis.findings import ALL
from transfer_core.analysis.influence import runs_for_reliability
from transfer_core.config import ConfigError
from transfer_core.counterfactual import (CONTRASTS, CONTRASTS_ARTIFACT, FULL, SELECTION_ARTIFACT, SUMMARY_ARTIFACT,
                                          Selection, read_plan)
from transfer_core.counterfactual.gate import selection_half_accuracy
from transfer_core.registry import CHAMPION, model_name, read_selection
from transfer_core.sweep import TUNE_RUN_TAG
from transfer_core.execute import Context
from transfer_core.track import artifact_path, existing_experiment, latest_run, run_config
from transfer_core.track.runs import COUNTERFACTUAL
from transfer_core.tune import find_tune_run

RESULTS_FILE = "RESULTS.md"
ANALYSIS_COPIES = ["class_influence.csv", "class_aggregates.csv", "heatmap.png", "ranking.png", "rank_stability.csv",
                   "rank_stability.png", "subpopulations.csv", "subpopulations.png", "near_duplicates.csv",
                   "near_duplicates.png", "leakage_candidates.csv", "datamodel.png", "summary.json",
                   # the validation ranking that chose the removals, and its stability: the audit trail
                   "class_influence_validation.csv", "rank_stability_validation.csv"]
COUNTERFACTUAL_COPIES = ["counterfactual_accuracy.png", "counterfactual_summary.csv", "counterfactual_runs.csv",
                         CONTRASTS_ARTIFACT, SELECTION_ARTIFACT]
ATTRIBUTION_COPIES = ["class_influence_validation.csv", "class_influence.csv", "ranking.png", "top_images.csv"]
RELIABILITY = 0.9  # split-half correlation at which a class ranking counts as stable


@dataclass
class PublishedRuns:
    analysis: object | None  # None: an attribution-ranked counterfactual published without an analysis
    counterfactual: object | None
    tune: object | None
    attribution: object | None = None  # the attribution run whose ranking chose the removals (no analysis)


def find_runs(client: MlflowClient, experiment: str, analysis_run_id: str | None = None,
              counterfactual_run_id: str | None = None) -> PublishedRuns:
    """The analysis run (given or latest FINISHED), its latest FINISHED counterfactual run, and the tune
    run whose recipe the analysed sweep was trained with (the sweep's ``tune_run_id`` tag; None when unset).

    Without an analysis (``analysis_run_id`` names an attribution run, or none is given and the experiment
    has no FINISHED analysis run), the counterfactual run (given, else the latest FINISHED one, of that
    attribution run when named) is published with the attribution run that ranked it, when its
    ``ranking_source`` tag is ``attribution`` (:func:`attribution_runs`)."""
    experiment_id = existing_experiment(client, experiment)
    try:
        analysis = find_analysis_run(client, experiment_id, analysis_run_id)
    except ConfigError:
        found = attribution_runs(client, experiment_id, analysis_run_id, counterfactual_run_id)
        if found is None:
            raise
        return found
    if counterfactual_run_id:
        counterfactual = read_selection(client, counterfactual_run_id)[0]
    else:
        counterfactual = latest_run(client, experiment_id, COUNTERFACTUAL, analysis_run_id=analysis.info.run_id)
    parent_id = analysis.data.tags.get("sweep_parent_run_id")
    tune_run_id = client.get_run(parent_id).data.tags.get(TUNE_RUN_TAG) if parent_id else None
    tune = find_tune_run(client, experiment_id, tune_run_id) if tune_run_id else None
    return PublishedRuns(analysis, counterfactual, tune)


def attribution_runs(client: MlflowClient, experiment_id: str, analysis_run_id: str | None,
                     counterfactual_run_id: str | None) -> PublishedRuns | None:
    """An attribution-ranked counterfactual run and its attribution run, or None when the runs named (or,
    with none named, the experiment's latest FINISHED counterfactual) are not an attribution and its
    counterfactual; the caller then raises its own error."""
    from transfer_core.attribution.step import get_attribution_run

    if analysis_run_id:
        try:
            attribution = get_attribution_run(client, analysis_run_id, finished=True)
        except ConfigError:
            return None
    if counterfactual_run_id:
        counterfactual = read_selection(client, counterfactual_run_id)[0]
    elif analysis_run_id:
        counterfactual = latest_run(client, experiment_id, COUNTERFACTUAL, analysis_run_id=analysis_run_id)
        if counterfactual is None:
            raise ConfigError(f"attribution run {analysis_run_id} has no FINISHED counterfactual run; run "
                              f"`transfer-core counterfactual --ranking attribution --analysis {analysis_run_id}`")
    else:
        counterfactual = latest_run(client, experiment_id, COUNTERFACTUAL)
    tags = counterfactual.data.tags if counterfactual is not None else {}
    if tags.get("ranking_source") != "attribution":
        return None
    ranker = tags.get("analysis_run_id", "")
    if analysis_run_id and ranker != analysis_run_id:
        raise ConfigError(f"counterfactual run {counterfactual.info.run_id} checks the ranking of run {ranker}, not "
                          f"of attribution run {analysis_run_id}; drop --analysis or --counterfactual")
    if not analysis_run_id:
        attribution = get_attribution_run(client, ranker, finished=True)
    return PublishedRuns(None, counterfactual, None, attribution)


def ci(value: float, low: float, high: float, scale: float = 100.0, sign: bool = True) -> str:
    """``+0.47 [+0.16, +0.76]`` (scaled; the interval is left out when it is not finite)."""
    fmt = "{:+.2f}" if sign else "{:.2f}"
    text = fmt.format(value * scale)
    if np.isfinite(low) and np.isfinite(high):
        text += f" [{fmt.format(low * scale)}, {fmt.format(high * scale)}]"
    return text


def markdown(table: pd.DataFrame) -> str:
    """A pandas table as a GitHub markdown table (no tabulate dependency)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def top_classes(rows: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k most helpful and k most detrimental classes of one scope side by side, with intervals
    in points (x100); ``*`` marks an interval that excludes zero."""
    rows = rows.sort_values("influence", ascending=False, kind="stable")
    k = min(k, len(rows))
    helpful, harmful = rows.head(k), rows.tail(k).iloc[::-1]
    name = lambda r: f"{r.class_name}{'*' if r.significant else ''}"  # noqa: E731
    return pd.DataFrame({
        "rank": range(1, k + 1),
        "most helpful": [name(r) for r in helpful.itertuples()],
        "helpful: influence [95% CI]": [ci(r.influence, r.ci_low, r.ci_high) for r in helpful.itertuples()],
        "most detrimental": [name(r) for r in harmful.itertuples()],
        "detrimental: influence [95% CI]": [ci(r.influence, r.ci_low, r.ci_high) for r in harmful.itertuples()]})


def accuracy_rows(summary: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """Full source, the pruned candidate chosen on the validation selection half (and whether it is
    champion), and the best bottom-k on test (for information only), with means and 95% t-intervals
    over seeds, in percent. Which split each column comes from is in its header."""
    full = summary[summary.order == FULL].iloc[0]
    bottom = summary[summary.order == "bottom"]
    rows = [("full source (k = 0)", full)]
    if selection.k > 0:
        chosen = summary[(summary.order == selection.order) & (summary.k == selection.k)].iloc[0]
        verdict = "champion" if selection.is_champion else "not champion: no evidence"
        rows.append((f"remove bottom {selection.k}, chosen on the validation selection half ({verdict})", chosen))
    if len(bottom):
        best = bottom.loc[bottom.test_mean.idxmax()]
        rows.append((f"best bottom-k on test (k = {int(best.k)}; picked on test, for information only)", best))
    has_select = "select_mean" in summary
    return pd.DataFrame({
        "source": [name for name, _ in rows],
        "seeds": [int(r.n_seeds) for _, r in rows],
        "validation selection half − full (paired) [two-sided 95% CI]": [
            "—" if r.order == FULL or not has_select else ci(r.select_diff, r.select_diff_ci_low, r.select_diff_ci_high)
            for _, r in rows],
        "test acc % [two-sided 95% CI]": [ci(r.test_mean, r.test_ci_low, r.test_ci_high, sign=False)
                                          for _, r in rows],
        "test − full (paired) [two-sided 95% CI]": [
            "—" if r.order == FULL else ci(r.test_diff, r.diff_ci_low, r.diff_ci_high) for _, r in rows]})


def curve_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy per (order, k) with its interval and the paired difference from the full source."""
    order = {FULL: 0, "bottom": 1, "top": 2, "random": 3}
    summary = summary.assign(rank=summary.order.map(order)).sort_values(["rank", "k"])
    return pd.DataFrame({
        "removal": summary.order, "k": summary.k, "seeds": summary.n_seeds,
        "test acc % [two-sided 95% CI]": [ci(r.test_mean, r.test_ci_low, r.test_ci_high, sign=False)
                                          for r in summary.itertuples()],
        "test − full (paired) [two-sided 95% CI]": [
            "—" if r.order == FULL else ci(r.test_diff, r.diff_ci_low, r.diff_ci_high) for r in summary.itertuples()]})


def registered_champion(client: MlflowClient, experiment: str, counterfactual) -> dict | None:
    """The model version that alias ``champion`` points to, when it was registered from ``counterfactual``:
    its version, pruned flag, seed, selection-half and test accuracy (fractions). None otherwise."""
    try:
        version = client.get_model_version_by_alias(model_name(experiment), CHAMPION)
    except Exception:  # no registered model or alias yet
        return None
    if version.tags.get("counterfactual_run_id") != counterfactual.info.run_id:
        return None
    run = client.get_run(version.tags["source_run_id"])
    return {"version": version.version, "name": version.name, "pruned": version.tags.get("pruned") == "true",
            "k": int(version.tags.get("k", 0)), "seed": run.data.tags.get("seed", "?"), "run_id": run.info.run_id,
            "select_acc": selection_half_accuracy(run, read_plan(counterfactual), client),
            "test_acc": run.data.metrics["target_test_acc"]}


def champion_rows(champion: dict | None) -> list[str]:
    """The registered version itself, one seed, below the means over seeds."""
    if champion is None:
        return ["No model version registered from this counterfactual run carries alias `champion` yet: run "
                "`transfer-core register`.", ""]
    source = f"remove bottom {champion['k']}" if champion["pruned"] else "full source"
    return [f"The registered champion itself is one model, not the mean over seeds: `{champion['name']}` version "
            f"{champion['version']} ({source}, seed {champion['seed']}, run `{champion['run_id']}`): "
            f"validation selection half {100 * champion['select_acc']:.2f}%, test {100 * champion['test_acc']:.2f}%.",
            ""]


def _ks(values) -> str:
    return ", ".join(str(int(k)) for k in values)


def claim_verdict(table: pd.DataFrame, contrast: str, direction: int) -> str:
    """The verdict of one paired contrast, from its rows (:func:`transfer_core.counterfactual.contrasts`):
    which ks show the claimed direction (``direction`` -1: below zero, +1: above), with every interval."""
    rows = table[table.contrast == contrast].sort_values("k")
    if rows.empty:
        return "not tested (the grid lacks one of its orders)"
    held, against = rows[rows.sign == direction], rows[rows.sign == -direction]
    intervals = "; ".join(f"k = {int(r.k)}: {ci(r.mean, r.ci_low, r.ci_high)}" for r in rows.itertuples())
    if len(held) == len(rows):
        text = f"**holds at every k** ({_ks(held.k)})"
    elif len(held):
        text = f"**holds at k = {_ks(held.k)} only**"
    else:
        text = "**not established** at any k"
    if len(against):
        text += f"; the opposite holds at k = {_ks(against.k)}"
    r = rows.iloc[0]
    if "family" in table:  # one family: every (contrast, k) of the grid
        correction = (f"two-sided {r.level:.2%} intervals, Bonferroni over all {int(r.family)} paired tests of the "
                      f"grid; the claim holds where its interval lies on its side of zero, a one-sided test at "
                      f"{(1 - r.level) / 2:.2%}")
    else:  # a table written before the family spanned every contrast
        correction = f"two-sided {r.level:.2%} intervals, Bonferroni over {len(rows)} k{'s' if len(rows) > 1 else ''}"
    return f"{text} — paired {contrast} in test points over {int(r.n_seeds)} seeds, {correction}: {intervals}"


def leak_methods(dups: pd.DataFrame, candidates: pd.DataFrame) -> pd.DataFrame:
    """Which method found each leaked test image: the near-duplicate search, the influence screen, or both.

    The near-duplicate search compares pixels; the influence screen flags test images dominated by one
    source class (the paper's method) and checks them for copies. A screen flag without a copy is no leak.
    """
    flagged = set(candidates.test_index.astype(int)) if len(candidates) else set()
    copies = set(candidates.test_index[candidates.verdict != "no duplicate"].astype(int)) if len(candidates) else set()
    rows = [{"test index": int(t), "test file": f,
             "found by": "both" if int(t) in flagged else "the near-duplicate search only"}
            for t, f in zip(dups.test_index, dups.test_file)]
    rows += [{"test index": int(t), "test file": f, "found by": "the influence screen only"}
             for t, f in zip(candidates.test_index, candidates.test_file)
             if int(t) in copies and int(t) not in set(dups.test_index.astype(int))]
    return pd.DataFrame(rows, columns=["test index", "test file", "found by"])


def counterfactual_verdicts(table: pd.DataFrame, selection: Selection) -> list[str]:
    """The counterfactual's claims (paired contrasts and the champion gate), one markdown bullet each."""
    lines = []
    claims = {name: claim for name, _, _, claim in CONTRASTS}
    for name, direction in (("top - random", -1), ("bottom - random", 1), ("bottom - top", 1), ("top - full", -1)):
        claim = claims[name] if name != "top - full" else "removing the most helpful classes hurts transfer"
        lines.append(f"- *{claim[0].upper() + claim[1:]}* — {claim_verdict(table, name, direction)}.")
    gate = (f"**holds**: the pruned source passed the champion gate on the validation selection half "
            f"({selection.reason})" if selection.is_champion else
            f"**not established**: {selection.reason}")
    lines.append(f"- *Removing the most detrimental classes improves transfer (the paper: +2.5 points on "
                 f"CIFAR-10)* — {gate}. On test, for information: {claim_verdict(table, 'bottom - full', 1)}.")
    return lines


def verdicts(table: pd.DataFrame | None, selection: Selection | None, dups: pd.DataFrame,
             candidates: pd.DataFrame) -> list[str]:
    """The report's claims, each stated with the test that fits it (markdown bullet lines)."""
    lines = []
    if table is not None and selection is not None:
        lines += counterfactual_verdicts(table, selection)
    methods = leak_methods(dups, candidates)
    screened = int(len(candidates))
    if len(methods):
        found = "; ".join(f"`{r['test file']}` by {r['found by']}" for _, r in methods.iterrows())
        lines.append(f"- *The tool finds train/test leakage* — **holds**: {found}. The influence screen flagged "
                     f"{screened} test images dominated by one source class, "
                     f"{int((candidates.verdict != 'no duplicate').sum()) if screened else 0} of them copies.")
    else:
        lines.append(f"- *The tool finds train/test leakage* — no copy found; the influence screen flagged {screened} "
                     "test images, none a copy.")
    lines.append("- *Detrimental* means less helpful than the average class: every model keeps exactly half the "
                 "classes, so the difference-of-means influences average to about zero; only the counterfactual "
                 "(bottom - full) tests whether removing a class helps in absolute terms.")
    return lines


def pick_subpopulation(subs: pd.DataFrame, choice: str | None = None, min_examples: int = 8) -> pd.Series:
    """The sub-population ``"target:source"``, else the group with the largest share of its target
    class among those with at least ``min_examples`` examples."""
    if choice:
        target, _, source = choice.partition(":")
        hit = subs[(subs.target_class == target) & (subs.source_class == source)]
        if hit.empty:
            raise ConfigError(f"no sub-population {choice!r} in subpopulations.csv; give TARGET:SOURCE as listed there")
        return hit.iloc[0]
    big = subs[subs.n_examples >= min_examples]
    return (big if len(big) else subs).sort_values("share", ascending=False, kind="stable").iloc[0]


def subpopulation_figure(group: pd.Series, analysis, dirs, path: Path, n_images: int = 8) -> Path:
    """The group's target test images (most influenced first) above images of its source class, at 32 px."""
    from transfer_core.analysis import figures
    from transfer_core.data import load_split

    config = run_config(analysis)
    test = load_split(config.data.target, "test", 32, dirs)
    source = load_split(config.data.source, "train", 32, dirs)
    members = [int(i) for i in str(group.examples).split(";") if i][:n_images]
    source_members = np.flatnonzero(source.labels.numpy() == int(group.class_index))[:n_images]
    rows = [(f"source\n{group.source_class}", float(group.mean_influence), [source.images[i] for i in source_members])]
    title = (f"Sub-population: {group.target_class} test images whose most influential source class is "
             f"{group.source_class}, above {group.source_class} training images")
    figures.image_grid(f"{group.target_class} <- {group.source_class}", [test.images[i] for i in members], rows, path,
                       title)
    return path


def per_target_sections(aggregates: pd.DataFrame, output: str, k: int) -> list[str]:
    """One markdown table of the k most helpful and k most detrimental classes per target class."""
    rows = aggregates[(aggregates.output == output) & (aggregates.scope != ALL)]
    parts = []
    for scope in rows.scope.drop_duplicates():
        parts += [f"#### {scope}", "", markdown(top_classes(rows[rows.scope == scope], k)), ""]
    return parts


def counterfactual_sections(client: MlflowClient, experiment: str, cf, out: Path,
                            chooser: str) -> tuple[list[str], pd.DataFrame, Selection]:
    """Copy the counterfactual run's artifacts into ``out`` and write its Accuracy and Counterfactual curves
    sections (``chooser``: which ranking removed the classes, in words); returns the lines, its paired
    contrasts and its selection, for the verdicts."""
    for name in COUNTERFACTUAL_COPIES:
        shutil.copyfile(artifact_path(cf, name, client), out / name)
    cf_summary = pd.read_csv(out / SUMMARY_ARTIFACT)
    contrast_table = pd.read_csv(out / CONTRASTS_ARTIFACT)
    selection = Selection.from_json((out / SELECTION_ARTIFACT).read_text())
    lines = ["## Accuracy", "", f"Target accuracy in percent, mean and two-sided 95% t-interval over seeds; "
             f"differences "
             f"are paired by seed (run `{cf.info.run_id}`, `{SUMMARY_ARTIFACT}`, `{SELECTION_ARTIFACT}`). The "
             f"removed classes come from {chooser}, fitted on one half of the validation split; k is chosen, "
             "and the champion gated, on the other half; the "
             "test split only scores.", "",
             markdown(accuracy_rows(cf_summary, selection)), "",
             *champion_rows(registered_champion(client, experiment, cf)),
             f"Selection (look {selection.look} at this selection half): {selection.describe()}", "",
             "## Counterfactual curves", "", "![counterfactual curves](counterfactual_accuracy.png)", "",
             markdown(curve_rows(cf_summary)), ""]
    return lines, contrast_table, selection


def config_line(config) -> str:
    """The source, target and recipe of a run's config, in one sentence."""
    return (f"Source `{config.data.source}` -> target `{config.data.target}`, {config.data.resolution} px, "
            f"{config.data.source_images_per_class} images per source class, alpha {config.alpha}, "
            f"transfer mode `{config.transfer.mode}`.")


def publish_attribution(experiment: str, out: Path, runs: PublishedRuns, client: MlflowClient, top_k: int) -> Path:
    """The results folder of an attribution-ranked counterfactual without an analysis: the runs, the attribution
    ranking of the validation ranking half with its figure and top images, the counterfactual's sections and
    verdicts (as :func:`publish` writes them); returns the path of RESULTS.md."""
    attribution, cf = runs.attribution, runs.counterfactual
    for name in ATTRIBUTION_COPIES:
        shutil.copyfile(artifact_path(attribution, name, client), out / name)
    at_id = attribution.info.run_id
    metrics = attribution.data.metrics
    ranking = pd.read_csv(out / "class_influence_validation.csv")
    ranking = ranking.assign(significant=(ranking.ci_low > 0) | (ranking.ci_high < 0))
    chooser = (f"the gradient attribution's ranking (attribution run `{at_id}`, "
               "[table](class_influence_validation.csv), [figure](ranking.png); a screen: docs/attribution.md)")
    lines = [f"# Results of experiment `{experiment}`", "",
             "Written by `transfer-core publish`; every table names the MLflow run and artifact it comes from.",
             "Positive influence = including the source class helps the target.", "",
             "No analysis run: the removed classes were ranked by gradient attribution (TRAK through the transfer, "
             "`transfer-core attribute`), a screen of the retraining influences that the counterfactual below "
             "checks by retraining (docs/attribution.md).", "",
             "| step | MLflow run |", "|---|---|",
             f"| attribution | `{at_id}` ({int(metrics.get('n_models', 0))} models, "
             f"{metrics.get('cpu_s', float('nan')):.0f} CPU-s) |",
             f"| counterfactual | `{cf.info.run_id}` (removals chosen by the attribution ranking of run `{at_id}`) |",
             "", config_line(run_config(attribution)), ""]
    cf_lines, contrast_table, selection = counterfactual_sections(client, experiment, cf, out, chooser)
    lines += cf_lines
    lines += ["## Verdicts", "", "Each claim with the test that fits it (paired tests from "
              f"`{CONTRASTS_ARTIFACT}`, all of them one family, corrected together; the champion gate from "
              f"`{SELECTION_ARTIFACT}`, whose two-sided interval decides by its lower end alone):", "",
              *counterfactual_verdicts(contrast_table, selection), ""]
    half = metrics.get("selection_split_half_spearman", float("nan"))
    lines += ["## Attribution ranking", "", f"Summed attribution score of each source class on the target's "
              f"validation ranking half, x100 in the units of TRAK's linearisation (compare ranks, not values), "
              f"two-sided 95% bootstrap intervals over the models (run `{at_id}`, "
              "`class_influence_validation.csv`; the test split's ranking: `class_influence.csv`); `*` = the "
              f"interval excludes zero, not corrected for {len(ranking)} comparisons. Split-half Spearman "
              f"(disjoint halves of the models): {half:.3f}.", "",
              markdown(top_classes(ranking, top_k)), "", "![ranking](ranking.png)", "",
              "The source images that score highest on sampled target test examples: "
              "[top_images.csv](top_images.csv).", "",
              "The ranking is a gradient-attribution screen, not the retraining study's influences: what it ranks "
              "is checked by the counterfactual above (docs/attribution.md).", ""]
    path = out / RESULTS_FILE
    path.write_text("\n".join(lines))
    return path


def publish(experiment: str, out_dir, *, ctx: Context, analysis_run_id: str | None = None,
            counterfactual_run_id: str | None = None, top_k: int = 10, subpopulation: str | None = None) -> Path:
    """Write the results folder described in the module docstring; returns the path of RESULTS.md."""
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    client = ctx.client
    runs = find_runs(client, experiment, analysis_run_id, counterfactual_run_id)
    analysis = runs.analysis
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if analysis is None:
        return publish_attribution(experiment, out, runs, client, top_k)
    for name in ANALYSIS_COPIES:
        shutil.copyfile(artifact_path(analysis, name, client), out / name)
    grids = json.loads(artifact_path(analysis, "image_grids.json", client).read_text())
    for grid in grids:
        shutil.copyfile(artifact_path(analysis, grid["picture"], client), out / f"grid_{grid['target_class']}.png")
    summary = json.loads((out / "summary.json").read_text())
    output = summary["output"]
    aggregates = pd.read_csv(out / "class_aggregates.csv")
    whole = aggregates[(aggregates.output == output) & (aggregates.scope == ALL)]
    stability = pd.read_csv(out / "rank_stability.csv")
    subs = pd.read_csv(out / "subpopulations.csv")
    unit = "points of target accuracy" if output == "correct" else f"mean {output}, x100"
    a_id = analysis.info.run_id

    lines = [f"# Results of experiment `{experiment}`", "",
             "Written by `transfer-core publish`; every table names the MLflow run and artifact it comes from.",
             "Positive influence = including the source class helps the target.", "",
             "| step | MLflow run |", "|---|---|"]
    if runs.tune is not None:
        lines.append(f"| tune (recipe used by the sweep) | `{runs.tune.info.run_id}` |")
    lines += [f"| sweep | `{summary['sweep_id']}` ({summary['n_runs']} FINISHED subset runs) |",
              f"| analysis | `{a_id}` (output `{output}`) |"]
    # which ranking chose the removals: the counterfactual's tags say
    chooser = "the analysis's ranking (`class_influence_validation.csv`)"
    if runs.counterfactual is not None:
        ranked_by = runs.counterfactual.data.tags.get("ranking_source", "retraining")
        ranker = runs.counterfactual.data.tags.get("analysis_run_id", "")
        if ranked_by == "attribution":
            chooser = (f"the gradient attribution's ranking (attribution run `{ranker}`, "
                       "[table](class_influence_validation_attribution.csv), [figure](ranking_attribution.png); "
                       "a screen: docs/attribution.md)")
            for name, copy in (("class_influence_validation.csv", "class_influence_validation_attribution.csv"),
                               ("ranking.png", "ranking_attribution.png")):
                shutil.copyfile(artifact_path(client.get_run(ranker), name, client), out / copy)
        lines.append(f"| counterfactual | `{runs.counterfactual.info.run_id}` (removals chosen by the {ranked_by} "
                     f"ranking of run `{ranker}`) |")
    lines += ["", config_line(run_config(analysis)), ""]

    contrast_table, selection = None, None
    if runs.counterfactual is not None:
        cf_lines, contrast_table, selection = counterfactual_sections(client, experiment, runs.counterfactual, out,
                                                                      chooser)
        lines += cf_lines
    else:
        lines += ["## Accuracy", "", "No FINISHED counterfactual run of this analysis yet: run "
                  "`transfer-core counterfactual`.", ""]
    dups = pd.read_csv(out / "near_duplicates.csv")
    candidates = pd.read_csv(out / "leakage_candidates.csv")
    lines += ["## Verdicts", "", "Each claim with the test that fits it (paired tests from "
              f"`{CONTRASTS_ARTIFACT}`, all of them one family, corrected together; the champion gate from "
              f"`{SELECTION_ARTIFACT}`, whose two-sided interval decides by its lower end alone; leakage from "
              "`near_duplicates.csv` and `leakage_candidates.csv`):", "",
              *verdicts(contrast_table, selection, dups, candidates), ""]

    lines += ["## Top classes", "", f"Influence on the whole target in {unit}, fitted on the target test split, "
              f"two-sided 95% bootstrap intervals (run `{a_id}`, `class_aggregates.csv`); `*` = the interval excludes "
              "zero, not "
              "corrected for "
              f"{len(whole)} comparisons.", "", markdown(top_classes(whole, top_k)), "",
              "![ranking](ranking.png)", "", "### Per target class", "",
              f"Influence on each target class's accuracy in {unit}; `*` as above (uncorrected).", "",
              *per_target_sections(aggregates, output, top_k), "![heatmap](heatmap.png)", ""]

    last = stability.iloc[-1] if len(stability) else None
    lines += ["## Stability", "", f"Split-half Spearman correlation of the class rankings from two disjoint halves "
              f"of the runs (run `{a_id}`, `rank_stability.csv`).", "",
              markdown(pd.DataFrame({"runs per half": stability.n_runs_per_half,
                                     "Spearman mean": stability.spearman_mean.round(3),
                                     "std over splits": stability.spearman_std.round(3)})), "",
              "![rank stability](rank_stability.png)", ""]
    if last is not None:
        n_half, r = int(last.n_runs_per_half), float(last.spearman_mean)
        needed = runs_for_reliability(n_half, r, RELIABILITY)
        if np.isfinite(needed):
            lines += [f"Spearman-Brown extrapolation from {n_half} runs per half (Spearman {r:.3f}): a ranking "
                      f"that an independent sweep of the same size would reproduce at Spearman {RELIABILITY} "
                      f"needs about **{needed:,.0f} runs**.", ""]
        else:
            lines += [f"At {n_half} runs per half the two halves do not agree (Spearman {r:.3f}), so the "
                      "number of runs a stable ranking needs cannot be extrapolated yet.", ""]

    exact, near = dups[dups.exact], dups[~dups.exact]
    lines += ["## Leakage", "", f"Every target test image with an exact copy in the source train set, and every "
              f"nearest pair with 8x8-thumbnail cosine >= the run's threshold (run `{a_id}`, `near_duplicates.csv`): "
              f"{len(exact)} exact, {len(near)} near.", ""]
    if len(dups):
        methods = leak_methods(dups, candidates)
        found_by = dict(zip(methods["test index"], methods["found by"]))
        lines += [markdown(pd.DataFrame({
            "target test file": dups.test_file, "test index": dups.test_index, "source train file": dups.source_file,
            "similarity": [("1.0 (exact)" if e else f"{s:.4f}") for e, s in zip(dups.exact, dups.similarity)],
            "found by": [found_by[int(t)] for t in dups.test_index]})), "",
            "![near duplicates](near_duplicates.png)", ""]

    if len(subs):
        group = pick_subpopulation(subs, subpopulation)
        subpopulation_figure(group, analysis, ctx.dirs, out / "subpopulation_example.png")
        lines += ["## Sub-populations", "", f"`{group.target_class}` test images whose most influential source class "
                  f"is `{group.source_class}`: {int(group.n_examples)} images, {group.share:.1%} of the class, mean "
                  f"per-example influence {group.mean_influence * 100:+.2f} (x100; run `{a_id}`, "
                  f"`subpopulations.csv`). Top row: the "
                  f"most influenced of them; below: `{group.source_class}` training images.", "",
                  "![sub-population example](subpopulation_example.png)", "",
                  "All classes' largest groups: ![sub-populations](subpopulations.png)", ""]
    path = out / RESULTS_FILE
    path.write_text("\n".join(lines))
    return path
