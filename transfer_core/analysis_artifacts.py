"""Everything an analysis run logs, written into one folder: arrays, tables, pictures, report.

Each finding is a table (CSV or JSON) plus a picture, and a section of ``report.html``.
Sign convention: positive influence = including the source class helps the target.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import figures, findings, report
from .config import ConfigError, RunConfig
from .data import ImageSet, load_split, sample_per_class
from .influence import spearman

GRID_CLASSES = 3  # top positive and top negative source classes shown per target class
GRID_IMAGES = 6  # example images per row of a grid
PICTURE_ROWS = 12  # rows of the leakage / duplicate pictures


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


def feature_extractor(run_ids: list[str], config: RunConfig, data_root, device, seed: int):
    """``images (N, 3, R, R) uint8 -> features (N, D)`` of a backbone trained on the source.

    The transferred model of the first of a few runs that logged a checkpoint, else a backbone
    pretrained here once on every source class with the sweep's recipe.
    """
    from mlflow.tracking import MlflowClient

    from .tracking import CHECKPOINT_ARTIFACT, artifact_path, load_checkpoint
    from .training import infer, normalize, pick_device
    from .transfer import pretrain

    device = pick_device(device)
    client = MlflowClient()
    for run_id in run_ids[:3]:
        try:
            path = artifact_path(client.get_run(run_id), CHECKPOINT_ARTIFACT)
        except Exception:  # a remote store without the file
            continue
        if Path(path).is_file():
            model = load_checkpoint(path).to(device)
            return lambda x: infer(model.net.features, (x.to(device).float() - model.mean) / model.std).cpu()
    source = load_split(config.data.source, "train", config.data.resolution, data_root)
    source = source.select(sample_per_class(source.labels, config.data.source_images_per_class,
                                            config.data.split_seed))
    net, (mean, std) = pretrain(config, source, source.n_classes, torch.Generator().manual_seed(seed), device)
    net.eval()
    return lambda x: infer(net.features, normalize(x, mean, std, device)).cpu()


def write_artifacts(root: Path, sweep_id: str, runs, config: RunConfig, options, data_root, device,
                    timings: dict, progress: bool = True) -> dict[str, float]:
    """Write every artifact of the analysis of ``runs`` (a CollectedRuns) into ``root``.

    Fills ``timings`` (seconds per stage) and returns summary metrics for the run.
    """
    from .analysis import MATRIX_ARTIFACT, RANKING_ARTIFACT, REPORT_ARTIFACT, estimate

    bar = tqdm(total=7, desc="analyze", disable=not progress, unit="step")

    def step(name: str, start: float) -> float:
        timings[f"{name}_s"] = time.perf_counter() - start
        bar.update()
        return time.perf_counter()

    now = time.perf_counter()
    test = load_split(config.data.target, "test", config.data.resolution, data_root)
    source = load_split(config.data.source, "train", config.data.resolution, data_root)
    if not np.array_equal(test.labels.numpy(), runs.target_labels):
        raise ConfigError(f"the target test split of {config.data.target} here is not the one the runs scored; "
                          "point --data-root at the data the sweep used")
    if list(source.class_names) != list(runs.source_classes):
        raise ConfigError(f"the source classes of {config.data.source} here differ from the runs' "
                          "source_classes.json; point --data-root at the data the sweep used")
    now = step("load_images", now)
    est = estimate(runs.masks, runs.outputs, runs.target_labels, runs.source_classes, test.class_names, options)
    now = step("estimate", now)
    output, agg, names = options.output, est.aggregates, runs.source_classes
    sections: list[report.Section] = []

    np.save(root / MATRIX_ARTIFACT, est.influence.astype(np.float32))
    np.save(root / "influence_std_error.npy", est.std_error.astype(np.float32))
    np.save(root / "datamodel_matrix.npy", est.ridge.coef.astype(np.float32))
    arrays = [MATRIX_ARTIFACT, "influence_std_error.npy", "datamodel_matrix.npy"]
    if est.bootstrap_se is not None:
        np.save(root / "influence_bootstrap_se.npy", est.bootstrap_se.astype(np.float32))
        arrays.append("influence_bootstrap_se.npy")
    table = findings.class_influence(agg, output)
    table.to_csv(root / RANKING_ARTIFACT, index=False)
    agg.to_csv(root / "class_aggregates.csv", index=False)
    lists = findings.ranked_lists(table, options.top_k)
    (root / "ranking.json").write_text(json.dumps({"output": output, "sign": "positive = including the class helps",
                                                   **lists}, indent=1))
    figures.ranking(pd.DataFrame(lists["most_helpful"], columns=table.columns),
                    pd.DataFrame(lists["most_detrimental"], columns=table.columns), output, root / "ranking.png")
    accuracy = findings.class_influence(agg, "correct")
    sections.append(report.Section(
        "Class influence on the whole target",
        f"Difference of means of each run's mean {output} over the target test set, between runs that kept the "
        f"class and runs that did not; intervals at {options.confidence:.0%} "
        f"({'bootstrap over runs, ' + str(options.bootstrap) + ' resamples' if options.bootstrap else 'normal, Welch'}"
        "). class_aggregates.csv also holds the effect on target accuracy and on each target class.",
        [RANKING_ARTIFACT, "class_aggregates.csv", "ranking.json", "ranking.png", *arrays],
        ["ranking.png"], table.head(2 * options.top_k)))
    if output != "correct":
        sections.append(report.Section("Class influence on target accuracy", "The same with correctness as the "
                                       "output: each class's effect on target accuracy (fraction correct).",
                                       ["class_aggregates.csv"], [], accuracy.head(options.top_k)))

    heat = findings.heatmap(agg, output, test.class_names)
    rows = agg[(agg["scope"] != findings.ALL) & (agg["output"] == output)]
    significant = rows.pivot(index="class_name", columns="scope", values="significant").loc[heat.index, heat.columns]
    heat.to_csv(root / "heatmap.csv")
    figures.heatmap(heat, significant, output, root / "heatmap.png")
    sections.append(report.Section("Source classes x target classes", f"Influence of each source class on the "
                                   f"mean {output} of each target class.", ["heatmap.csv", "heatmap.png"],
                                   ["heatmap.png"]))

    grids, grid_files = [], []
    for k, target in enumerate(test.class_names[:options.max_grid_classes]):
        scoped = rows[rows["scope"] == target].sort_values("influence", ascending=False)
        chosen = pd.concat([scoped[scoped["influence"] > 0].head(GRID_CLASSES),
                            scoped[scoped["influence"] < 0].tail(GRID_CLASSES).iloc[::-1]])
        source_labels = source.labels.numpy()
        grid_rows = [(r.class_name, r.influence, _examples(source, np.flatnonzero(source_labels == r.class_index)))
                     for r in chosen.itertuples()]
        name = f"grids/grid_{k:03d}.png"
        figures.image_grid(target, _examples(test, np.flatnonzero(test.labels.numpy() == k)), grid_rows, root / name)
        grid_files.append(name)
        grids.append({"target_class": target, "picture": name, "classes": _records(chosen[
            ["class_index", "class_name", "influence", "ci_low", "ci_high"]])})
    (root / "image_grids.json").write_text(json.dumps(grids, indent=1))
    sections.append(report.Section("Image grids", f"For each target class (first row: its test images), the "
                                   f"{GRID_CLASSES} source classes with the most positive and most negative "
                                   "influence on it, with example source images.", ["image_grids.json", *grid_files],
                                   grid_files))
    now = step("tables", now)

    mis = findings.misleading(agg, output)
    mis.to_csv(root / "misleading.csv", index=False)
    figures.misleading(mis, output, root / "misleading.png")
    sections.append(report.Section("Misleading source classes", "Pairs (source class -> target class) whose "
                                   "interval lies below zero: including the source class hurts that target class. "
                                   "significant_familywise also survives a Bonferroni correction over all pairs.",
                                   ["misleading.csv", "misleading.png"], ["misleading.png"], mis.head(15)))

    subs = findings.subpopulations(est.influence, runs.target_labels, test.class_names, names, test.file_names)
    subs.to_csv(root / "subpopulations.csv", index=False)
    sub_rows = []
    for target, group in subs.groupby("target_class", sort=False):
        for r in group.head(GRID_CLASSES).itertuples():
            members = np.array([int(i) for i in r.examples.split(";") if i])
            sub_rows.append((f"{target} <- {r.source_class}\n({r.n_examples})",
                             [("", img) for img in _examples(test, members)]))
    figures.pairs(sub_rows[:3 * options.max_grid_classes], "Sub-populations: target examples grouped by their "
                  "most influential source class", root / "subpopulations.png")
    sections.append(report.Section("Sub-populations", "Target examples of each class grouped by the source class "
                                   "with the largest influence on them.", ["subpopulations.csv", "subpopulations.png"],
                                   ["subpopulations.png"], subs.head(20)))
    now = step("subpopulations", now)

    candidates = findings.leakage_candidates(est.influence, est.std_error, options.leak_min_z,
                                             options.leak_dominance, options.max_candidates)
    features = None
    if options.feature_neighbours and len(candidates):
        features = feature_extractor(runs.run_ids, config, data_root, device, options.seed)
    checked = findings.check_candidates(candidates, test, source, features, options.duplicate_threshold)
    checked.to_csv(root / "leakage_candidates.csv", index=False)
    pictures = []
    for r in checked.head(PICTURE_ROWS).itertuples():
        row = [(f"test {r.test_index}", test.images[r.test_index]),
               (f"pixel NN {r.pixel_similarity:.3f}", source.images[r.pixel_nn_index])]
        if r.feature_nn_index >= 0:
            row.append((f"feature NN {r.feature_similarity:.3f}", source.images[r.feature_nn_index]))
        pictures.append((f"{r.source_class}\n{r.verdict}", row))
    figures.pairs(pictures, "Leakage candidates: test images dominated by one source class, and their nearest "
                  "images in it", root / "leakage_candidates.png")
    now = step("leakage", now)

    dup_test = load_split(config.data.target, "test", options.duplicate_resolution, data_root)
    dup_source = load_split(config.data.source, "train", options.duplicate_resolution, data_root)
    dups = findings.near_duplicates(dup_test, dup_source, options.duplicate_threshold)
    dups.to_csv(root / "near_duplicates.csv", index=False)
    dup_rows = []
    for test_index, matches in list(dups.groupby("test_index", sort=False))[:PICTURE_ROWS]:
        first = matches.iloc[0]
        images = [(_caption(first["test_file"]), dup_test.images[test_index])]
        images += [(_caption(m.source_file), dup_source.images[m.source_index]) for m in matches.head(3).itertuples()]
        dup_rows.append((f"{first['test_class']}\n{'exact' if first['exact'] else round(first['similarity'], 3)}",
                         images))
    figures.pairs(dup_rows, "Near duplicates: a target test image (left) and its copies or nearest image in the "
                  "source", root / "near_duplicates.png")
    sections.append(report.Section(
        "Leakage", f"Candidates: test examples whose top source class has z >= {options.leak_min_z} and at least "
        f"{options.leak_dominance}x the runner-up's influence, checked against that class's images by pixels "
        "(exact hash, thumbnail cosine) and backbone features. Near duplicates: the whole target test set against "
        f"the whole source train set at {options.duplicate_resolution} px; exact copies are always listed.",
        ["leakage_candidates.csv", "leakage_candidates.png", "near_duplicates.csv", "near_duplicates.png"],
        ["leakage_candidates.png", "near_duplicates.png"], checked.head(15)))
    now = step("duplicates", now)

    est.stability.to_csv(root / "rank_stability.csv", index=False)
    figures.stability(est.stability, root / "rank_stability.png")
    est.datamodel.to_csv(root / "datamodel.csv", index=False)
    figures.datamodel(est.datamodel, output, root / "datamodel.png")
    agreement = spearman(est.datamodel["difference_of_means"].to_numpy(), est.datamodel["ridge"].to_numpy())
    (root / "datamodel.json").write_text(json.dumps({
        "penalty": est.ridge.lam, "penalties": est.ridge.lambdas.tolist(),
        "holdout_mse": est.ridge.holdout_mse.tolist(), "spearman_with_difference_of_means": agreement}, indent=1))
    sections.append(report.Section("Uncertainty and a second estimator", "Rank stability: Spearman correlation of "
                                   "the class rankings from two disjoint halves of the runs, by runs per half. "
                                   "Datamodel: ridge regression of each output on the masks, its penalty chosen on "
                                   "held-out runs.", ["rank_stability.csv", "rank_stability.png", "datamodel.csv",
                                                      "datamodel.json", "datamodel.png"],
                                   ["rank_stability.png", "datamodel.png"], est.stability))
    summary = {"n_runs": len(runs), "n_targets": est.influence.shape[0], "n_classes": est.influence.shape[1],
               "top_influence": float(table["influence"].iloc[0]),
               "bottom_influence": float(table["influence"].iloc[-1]),
               "split_half_spearman": float(est.stability["spearman_mean"].iloc[-1]) if len(est.stability) else np.nan,
               "datamodel_spearman": agreement, "n_misleading_pairs": len(mis),
               "n_leakage_candidates": len(checked), "n_leakage_copies": int(checked["exact_copy"].sum()),
               "n_exact_duplicates": int(dups["exact"].sum()), "n_near_duplicates": int((~dups["exact"]).sum())}
    (root / "summary.json").write_text(json.dumps({"sweep_id": sweep_id,
                                                   "output": output, **summary, "run_ids": runs.run_ids}, indent=1))
    report.write(root, f"Analysis of {len(runs)} runs ({output})", {
        "source": config.data.source, "target": config.data.target, "transfer mode": config.transfer.mode,
        "runs": str(len(runs)), "output": output, "bootstrap resamples": str(options.bootstrap),
        "summary": "summary.json"}, sections, REPORT_ARTIFACT)
    step("report", now)
    bar.close()
    return summary

