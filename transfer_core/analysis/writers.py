"""Everything an analysis run logs, written into one folder: arrays, tables, pictures, report.

Each finding is a table (CSV or JSON) plus a picture, and a section of ``report.html``;
:func:`write_artifacts` calls one writer per finding, in order. To add a finding, write a
function ``(ctx: AnalysisState) -> None`` that saves its files under ``ctx.root``, appends a
:class:`~transfer_core.analysis.report.Section` and adds its headline numbers to
``ctx.summary``, and list it in :data:`WRITERS`.

Sign convention: positive influence = including the source class helps the target.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from transfer_core.analysis import figures, findings, report
from transfer_core.analysis.estimate import Estimates, estimate
from transfer_core.analysis.settings import AnalysisSettings
from transfer_core.analysis.influence import spearman
from transfer_core.config import ConfigError, RunConfig
from transfer_core.data import (DataDirs, ImageSet, channel_stats, load_split, sample_per_class,
                                validation_halves)
from transfer_core.track import CHECKPOINT_ARTIFACT, artifact_path, load_checkpoint

RANKING_ARTIFACT = "class_influence.csv"  # fitted on the test split: the findings
SELECTION_ARTIFACT = "class_influence_validation.csv"  # fitted on the validation ranking half: what chooses removals
SPLIT_NOTE = "fitted on the target test split (findings only; nothing is chosen on it)"
MATRIX_ARTIFACT = "influence_matrix.npy"
REPORT_ARTIFACT = "report.html"
GRID_CLASSES = 3  # top positive and top negative source classes shown per target class
GRID_IMAGES = 6  # example images per row of a grid
PICTURE_ROWS = 12  # rows of the leakage / duplicate pictures


@dataclass
class AnalysisState:
    """What the writers share: the folder, the runs and their estimates, the images, the report."""

    root: Path
    sweep_id: str
    runs: object  # transfer_core.sweep.CollectedRuns
    config: RunConfig
    options: AnalysisSettings
    est: Estimates
    test: ImageSet  # the target test split, at the runs' resolution
    source: ImageSet  # the source images the runs trained on (the per-class sample), at the runs' resolution
    sample: np.ndarray  # (len(source),) their indices in the full source train split
    dirs: DataDirs = field(default_factory=DataDirs)
    device: object = None
    client: MlflowClient | None = None  # the tracking store's client (to read the runs' checkpoints)
    sections: list[report.Section] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    table: pd.DataFrame | None = None  # class_influence.csv, once written


def _examples(images: ImageSet, members: np.ndarray, n: int = GRID_IMAGES) -> list[torch.Tensor]:
    """Up to ``n`` images at evenly spaced positions of ``members``."""
    if len(members) == 0:
        return []
    picks = members[np.unique(np.linspace(0, len(members) - 1, min(n, len(members))).round().astype(int))]
    return [images.images[i] for i in picks]


def _caption(file_name: str, width: int = 18) -> str:
    """The file's base name, wrapped onto short lines for a picture caption."""
    base = file_name.rsplit("/", 1)[-1]
    return "\n".join(base[i:i + width] for i in range(0, len(base), width))


def _records(table: pd.DataFrame) -> list[dict]:
    return json.loads(table.to_json(orient="records"))


def _scoped(ctx: AnalysisState) -> pd.DataFrame:
    """Aggregate rows of the chosen output, one per (target class, source class)."""
    agg = ctx.est.aggregates
    return agg[(agg["scope"] != findings.ALL) & (agg["output"] == ctx.options.output)]


def feature_extractor(run_ids: list[str], config: RunConfig, dirs, device, seed: int,
                      client: MlflowClient):
    """``images (N, 3, R, R) uint8 -> features (N, D)`` of a backbone trained on the source.

    The transferred model of the first of a few runs that logged a checkpoint, else a backbone
    pretrained here once on every source class with the sweep's recipe.
    """
    from transfer_core.train import fused_for_inference, infer, normalize, pick_device, pretrain

    device = pick_device(device)
    for run_id in run_ids[:3]:
        try:
            path = artifact_path(client.get_run(run_id), CHECKPOINT_ARTIFACT, client)
        except (MlflowException, OSError):  # a remote store without the file
            continue
        if Path(path).is_file():
            model = load_checkpoint(path).to(device)
            extract = fused_for_inference(model.net, "features")
            return lambda x: infer(extract, (x.to(device).float() - model.mean) / model.std).cpu()
    source = load_split(config.data.source, "train", config.data.resolution, dirs)
    source = source.select(sample_per_class(source.labels, config.data.source_images_per_class,
                                            config.data.split_seed))
    norm = channel_stats(source.images)
    net = pretrain(config, source, source.n_classes, torch.Generator().manual_seed(seed), device, norm)
    extract = fused_for_inference(net, "features")
    return lambda x: infer(extract, normalize(x, *norm, device)).cpu()


def write_class_influence(ctx: AnalysisState) -> None:
    """Per-example arrays, the ranking of classes on the whole target, and its bar chart."""
    root, est, options = ctx.root, ctx.est, ctx.options
    arrays = {MATRIX_ARTIFACT: est.influence, "influence_std_error.npy": est.std_error,
              "datamodel_matrix.npy": est.ridge.coef}
    if est.bootstrap_se is not None:
        arrays["influence_bootstrap_se.npy"] = est.bootstrap_se
    for name, array in arrays.items():
        np.save(root / name, array.astype(np.float32))
    table = findings.class_influence(est.aggregates, options.output)
    table.assign(split="test").to_csv(root / RANKING_ARTIFACT, index=False)
    est.aggregates.assign(split="test").to_csv(root / "class_aggregates.csv", index=False)
    lists = findings.ranked_lists(table, options.top_k)
    (root / "ranking.json").write_text(json.dumps({"output": options.output, "split": "test",
                                                   "sign": "positive = including the class helps", **lists}, indent=1))
    figures.ranking(pd.DataFrame(lists["most_helpful"], columns=table.columns),
                    pd.DataFrame(lists["most_detrimental"], columns=table.columns), options.output,
                    root / "ranking.png")
    interval = (f"bootstrap over runs, {options.bootstrap} resamples" if options.bootstrap else "normal, Welch")
    ctx.sections.append(report.Section(
        "Class influence on the whole target",
        f"Difference of means of each run's mean {options.output} over the target test set, between runs that kept "
        f"the class and runs that did not; intervals at {options.confidence:.0%} ({interval}); {SPLIT_NOTE}. "
        "class_aggregates.csv also holds the effect on target accuracy and on each target class.",
        [RANKING_ARTIFACT, "class_aggregates.csv", "ranking.json", "ranking.png", *arrays], ["ranking.png"],
        table.head(2 * options.top_k)))
    if options.output != "correct":
        ctx.sections.append(report.Section(
            "Class influence on target accuracy", "The same with correctness as the output: each class's effect on "
            "target accuracy (fraction correct).", ["class_aggregates.csv"], [],
            findings.class_influence(est.aggregates, "correct").head(options.top_k)))
    ctx.table = table
    ctx.summary.update(top_influence=float(table["influence"].iloc[0]),
                       bottom_influence=float(table["influence"].iloc[-1]))


def write_selection_ranking(ctx: AnalysisState) -> None:
    """The ranking counterfactuals remove classes by: fitted on the validation split's ranking half only."""
    est, options = ctx.est, ctx.options
    if est.selection is None:
        ctx.sections.append(report.Section(
            "Class ranking for counterfactuals", "The runs recorded no validation outputs (they predate them), so "
            "there is no held-out ranking to choose removals by; rerun the sweep to record them.", [], []))
        return
    est.selection.assign(split="validation-ranking-half").to_csv(ctx.root / SELECTION_ARTIFACT, index=False)
    est.selection_stability.to_csv(ctx.root / "rank_stability_validation.csv", index=False)
    last = est.selection_stability["spearman_mean"].iloc[-1] if len(est.selection_stability) else np.nan
    ctx.summary.update(selection_split_half_spearman=float(last), n_selection_targets=est.n_selection_targets)
    ctx.sections.append(report.Section(
        "Class ranking for counterfactuals (validation, ranking half)",
        f"The same estimator fitted on the ranking half of the target validation split ({est.n_selection_targets} "
        "examples): this ranking, never the test split's, chooses which classes a counterfactual removes; the "
        "other half of the validation split chooses and gates the pruned source, and the test split only scores "
        f"it. Split-half Spearman of this ranking at the largest half: {last:.3f}.",
        [SELECTION_ARTIFACT, "rank_stability_validation.csv"], [], est.selection.head(2 * options.top_k)))


def write_heatmap(ctx: AnalysisState) -> None:
    """Source classes x target classes, dots where the interval excludes zero."""
    output, test = ctx.options.output, ctx.test
    heat = findings.heatmap(ctx.est.aggregates, output, test.class_names)
    significant = _scoped(ctx).pivot(index="class_name", columns="scope",
                                     values="significant").loc[heat.index, heat.columns]
    heat.to_csv(ctx.root / "heatmap.csv")
    figures.heatmap(heat, significant, output, ctx.root / "heatmap.png")
    ctx.sections.append(report.Section("Source classes x target classes", f"Influence of each source class on the "
                                       f"mean {output} of each target class.", ["heatmap.csv", "heatmap.png"],
                                       ["heatmap.png"]))


def write_image_grids(ctx: AnalysisState) -> None:
    """Per target class: its test images, then example images of its top positive and negative classes."""
    rows, test, source = _scoped(ctx), ctx.test, ctx.source
    source_labels, test_labels = source.labels.numpy(), test.labels.numpy()
    grids, grid_files = [], []
    for k, target in enumerate(test.class_names[:ctx.options.max_grid_classes]):
        scoped = rows[rows["scope"] == target].sort_values("influence", ascending=False)
        chosen = pd.concat([scoped[scoped["influence"] > 0].head(GRID_CLASSES),
                            scoped[scoped["influence"] < 0].tail(GRID_CLASSES).iloc[::-1]])
        grid_rows = [(r.class_name, r.influence, _examples(source, np.flatnonzero(source_labels == r.class_index)))
                     for r in chosen.itertuples()]
        name = f"grids/grid_{k:03d}.png"
        figures.image_grid(target, _examples(test, np.flatnonzero(test_labels == k)), grid_rows, ctx.root / name)
        grid_files.append(name)
        grids.append({"target_class": target, "picture": name, "classes": _records(chosen[
            ["class_index", "class_name", "influence", "ci_low", "ci_high"]])})
    (ctx.root / "image_grids.json").write_text(json.dumps(grids, indent=1))
    ctx.sections.append(report.Section("Image grids", f"For each target class (first row: its test images), the "
                                       f"{GRID_CLASSES} source classes with the most positive and most negative "
                                       "influence on it, with example source images.",
                                       ["image_grids.json", *grid_files], grid_files))


def write_misleading(ctx: AnalysisState) -> None:
    """(source class, target class) pairs whose interval lies below zero."""
    mis = findings.misleading(ctx.est.aggregates, ctx.options.output)
    mis.to_csv(ctx.root / "misleading.csv", index=False)
    figures.misleading(mis, ctx.options.output, ctx.root / "misleading.png")
    ctx.sections.append(report.Section(
        "Misleading source classes", "Pairs (source class -> target class) whose interval lies below zero: including "
        "the source class hurts that target class. significant_familywise also survives a Bonferroni correction over "
        "all pairs.", ["misleading.csv", "misleading.png"], ["misleading.png"], mis.head(15)))
    ctx.summary["n_misleading_pairs"] = len(mis)


def write_subpopulations(ctx: AnalysisState) -> None:
    """Target examples grouped by their most influential source class."""
    test = ctx.test
    subs = findings.subpopulations(ctx.est.influence, ctx.runs.target_labels, test.class_names,
                                   ctx.runs.source_classes, test.file_names)
    subs.to_csv(ctx.root / "subpopulations.csv", index=False)
    sub_rows = []
    for target, group in subs.groupby("target_class", sort=False):  # the largest group of each class: one row
        r = next(group.itertuples())
        members = np.array([int(i) for i in r.examples.split(";") if i])
        sub_rows.append((f"{target} <- {r.source_class}\n({r.n_examples})",
                         [("", img) for img in _examples(test, members)]))
    figures.pairs(sub_rows[:ctx.options.max_grid_classes], "Sub-populations: each target class's largest group "
                  "by most influential source class", ctx.root / "subpopulations.png")
    ctx.sections.append(report.Section("Sub-populations", "Target examples of each class grouped by the source class "
                                       "with the largest influence on them.",
                                       ["subpopulations.csv", "subpopulations.png"], ["subpopulations.png"],
                                       subs.head(20)))


def write_leakage_candidates(ctx: AnalysisState) -> None:
    """Test examples dominated by one source class, checked against that class's images."""
    options, test, source = ctx.options, ctx.test, ctx.source
    candidates = findings.leakage_candidates(ctx.est.influence, ctx.est.std_error, options.leak_min_z,
                                             options.leak_dominance, options.max_candidates)
    features = None
    if options.feature_neighbours and len(candidates):
        features = feature_extractor(ctx.runs.run_ids, ctx.config, ctx.dirs, ctx.device, options.seed,
                                     ctx.client)
    checked = findings.check_candidates(candidates, test, source, features, options.duplicate_threshold)
    checked.to_csv(ctx.root / "leakage_candidates.csv", index=False)
    pictures = []
    for r in checked.head(PICTURE_ROWS).itertuples():
        row = [(f"test {r.test_index}", test.images[r.test_index]),
               (f"pixel NN {r.pixel_similarity:.3f}", source.images[r.pixel_nn_index])]
        if r.feature_nn_index >= 0:
            row.append((f"feature NN {r.feature_similarity:.3f}", source.images[r.feature_nn_index]))
        pictures.append((f"{r.source_class}\n{r.verdict}", row))
    figures.pairs(pictures, "Leakage candidates: test images dominated by one source class, and their nearest "
                  "images in it", ctx.root / "leakage_candidates.png")
    ctx.summary.update(n_leakage_candidates=len(checked), n_leakage_copies=int(checked["exact_copy"].sum()))
    ctx.sections.append(report.Section(
        "Leakage candidates", f"Test examples whose top source class has z >= {options.leak_min_z} and at least "
        f"{options.leak_dominance}x the runner-up's influence, checked against that class's images by pixels "
        "(exact hash, thumbnail cosine) and backbone features.",
        ["leakage_candidates.csv", "leakage_candidates.png"], ["leakage_candidates.png"], checked.head(15)))


def write_near_duplicates(ctx: AnalysisState) -> None:
    """Every target test image with an exact or near copy among the source images."""
    options, config = ctx.options, ctx.config
    dup_test = load_split(config.data.target, "test", options.duplicate_resolution, ctx.dirs)
    dup_source = load_split(config.data.source, "train", options.duplicate_resolution, ctx.dirs)
    dups = findings.near_duplicates(dup_test, dup_source, options.duplicate_threshold)
    dups.insert(4, "in_training_sample", np.isin(dups["source_index"].to_numpy(), ctx.sample))
    dups = dups.sort_values(["in_training_sample", "exact", "similarity"], ascending=False, kind="stable")
    dups.to_csv(ctx.root / "near_duplicates.csv", index=False)
    dup_rows = []
    for test_index, matches in list(dups.groupby("test_index", sort=False))[:PICTURE_ROWS]:
        first = matches.iloc[0]
        images = [(_caption(first["test_file"]), dup_test.images[test_index])]
        images += [(_caption(m.source_file), dup_source.images[m.source_index]) for m in matches.head(3).itertuples()]
        dup_rows.append((f"{first['test_class']}\n{'exact' if first['exact'] else round(first['similarity'], 3)}",
                         images))
    figures.pairs(dup_rows, "Near duplicates: a target test image (left) and its copies or nearest image in the "
                  "source", ctx.root / "near_duplicates.png")
    trained = dups["in_training_sample"]
    ctx.summary.update(n_exact_duplicates=int(dups["exact"].sum()), n_near_duplicates=int((~dups["exact"]).sum()),
                       n_duplicates_trained_on=int(trained.sum()))
    ctx.sections.append(report.Section(
        "Near duplicates", f"The whole target test set against the whole source train split at "
        f"{options.duplicate_resolution} px; exact copies are always listed. in_training_sample says whether the "
        f"source image was among the {len(ctx.sample)} images the runs trained on "
        f"({int(trained.sum())} of {len(dups)} were): only those can leak into a model.",
        ["near_duplicates.csv", "near_duplicates.png"], ["near_duplicates.png"], dups.head(15)))


def write_stability(ctx: AnalysisState) -> None:
    """Split-half rank stability and the ridge datamodel beside the difference of means."""
    root, est = ctx.root, ctx.est
    est.stability.to_csv(root / "rank_stability.csv", index=False)
    figures.stability(est.stability, root / "rank_stability.png")
    est.datamodel.to_csv(root / "datamodel.csv", index=False)
    figures.datamodel(est.datamodel, ctx.options.output, root / "datamodel.png")
    agreement = spearman(est.datamodel["difference_of_means"].to_numpy(), est.datamodel["ridge"].to_numpy())
    ridge = est.ridge
    (root / "datamodel.json").write_text(json.dumps({
        "penalty": ridge.lam, "penalties": ridge.lambdas.tolist(), "holdout_mse": ridge.holdout_mse.tolist(),
        "penalty_at_edge": ridge.at_edge, "note": ridge.edge_note, "split": "test",
        "spearman_with_difference_of_means": agreement}, indent=1))
    ctx.sections.append(report.Section(
        "Uncertainty and a second estimator", "Rank stability: Spearman correlation of the class rankings from two "
        "disjoint halves of the runs, by runs per half. Datamodel: ridge regression of each output on the masks, its "
        f"penalty chosen on held-out runs ({ridge.lam:.3g}); {ridge.edge_note}. Spearman with the difference of "
        f"means: {agreement:.3f}.", ["rank_stability.csv", "rank_stability.png", "datamodel.csv", "datamodel.json",
                                      "datamodel.png"], ["rank_stability.png", "datamodel.png"], est.stability))
    ctx.summary.update(split_half_spearman=float(est.stability["spearman_mean"].iloc[-1]) if len(est.stability)
                       else np.nan, datamodel_spearman=agreement, datamodel_penalty_at_edge=float(ridge.at_edge))


WRITERS = [write_class_influence, write_selection_ranking, write_heatmap, write_image_grids, write_misleading,
           write_subpopulations, write_leakage_candidates, write_near_duplicates, write_stability]


def load_images(config: RunConfig, runs, dirs) -> tuple[ImageSet, ImageSet, np.ndarray]:
    """The target test split and the source images the runs trained on (with their indices in the
    source train split), checked to be the ones the runs used."""
    test = load_split(config.data.target, "test", config.data.resolution, dirs)
    source = load_split(config.data.source, "train", config.data.resolution, dirs)
    if not np.array_equal(test.labels.numpy(), runs.target_labels):
        raise ConfigError(f"the target test split of {config.data.target} here is not the one the runs scored; "
                          "point --data-root at the data the sweep used")
    if list(source.class_names) != list(runs.source_classes):
        raise ConfigError(f"the source classes of {config.data.source} here differ from the runs' "
                          "source_classes.json; point --data-root at the data the sweep used")
    sample = sample_per_class(source.labels, config.data.source_images_per_class, config.data.split_seed)
    return test, source.select(sample), sample.numpy()


def write_artifacts(root: Path, sweep_id: str, runs, config: RunConfig, options: AnalysisSettings, dirs, device,
                    timings: dict, progress: bool = True, client: MlflowClient | None = None) -> dict[str, float]:
    """Write every artifact of the analysis of ``runs`` (a CollectedRuns) into ``root``.

    Fills ``timings`` (seconds per stage) and returns summary metrics for the run.
    """
    bar = tqdm(total=len(WRITERS) + 3, desc="analyze", disable=not progress, unit="step")
    start = time.perf_counter()

    def done(stage: str) -> None:
        nonlocal start
        timings[f"{stage}_s"] = time.perf_counter() - start
        start = time.perf_counter()
        bar.update()

    test, source, sample = load_images(config, runs, dirs)
    done("load_images")
    halves = None if runs.val_labels is None else validation_halves(runs.val_labels, config.data.split_seed)
    est = estimate(runs.masks, runs.outputs, runs.target_labels, runs.source_classes, test.class_names, options,
                   runs.val_outputs, halves)
    done("estimate")
    ctx = AnalysisState(root, sweep_id, runs, config, options, est, test, source, sample, dirs, device, client)
    ctx.summary.update(n_runs=len(runs), n_targets=est.influence.shape[0], n_classes=est.influence.shape[1])
    for writer in WRITERS:
        writer(ctx)
        done(writer.__name__.removeprefix("write_"))
    splits = {"findings_split": "test", "selection_split": "validation, ranking half" if halves is not None else None}
    (root / "summary.json").write_text(json.dumps({"sweep_id": sweep_id, "output": options.output, **splits,
                                                   **ctx.summary, "run_ids": runs.run_ids}, indent=1))
    report.write(root, f"Analysis of {len(runs)} runs ({options.output})", {
        "source": config.data.source, "target": config.data.target, "transfer mode": config.transfer.mode,
        "runs": str(len(runs)), "output": options.output, "bootstrap resamples": str(options.bootstrap),
        "summary": "summary.json"}, ctx.sections, REPORT_ARTIFACT)
    done("report")
    bar.close()
    return ctx.summary
