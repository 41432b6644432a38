"""The analysis's findings as tables (pandas), from influence arrays and images.

Sign convention: positive influence = including the source class helps the target.
Shapes: ``influence`` / ``std_error`` ``(n_targets, n_classes)``; ``labels`` ``(n_targets,)``.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pandas as pd
import torch

from transfer_core.analysis import duplicates
from transfer_core.data import ImageSet

ALL = "(all)"  # the scope name of the whole target


def z_value(confidence: float) -> float:
    """Two-sided normal quantile: 1.96 for 0.95."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def aggregate_table(output: str, scopes: list[str], class_names: list[str], influence: np.ndarray,
                    std_error: np.ndarray, draws: np.ndarray | None, confidence: float) -> pd.DataFrame:
    """Long table of class influences on groups of targets, one row per (scope, class).

    ``influence`` / ``std_error`` ``(n_scopes, n_classes)`` from the difference of means of
    group means; ``draws`` ``(n_boot, n_scopes, n_classes)`` bootstrap replicates or None.
    The interval is the bootstrap percentile interval when draws are given, else
    influence +- z * std_error. ``significant``: the interval excludes zero;
    ``significant_familywise``: |z| beats the Bonferroni threshold over all rows.
    """
    n_scopes, n_classes = influence.shape
    if draws is not None and len(draws) >= 2:
        tail = (1 - confidence) / 2 * 100
        low, high = np.nanpercentile(draws, [tail, 100 - tail], axis=0)
    else:
        half = z_value(confidence) * std_error
        low, high = influence - half, influence + half
    with np.errstate(divide="ignore", invalid="ignore"):
        z = influence / std_error
    familywise = z_value(1 - (1 - confidence) / (n_scopes * n_classes))
    return pd.DataFrame({
        "output": output,
        "scope": np.repeat(scopes, n_classes),
        "class_index": np.tile(np.arange(n_classes), n_scopes),
        "class_name": np.tile(class_names, n_scopes),
        "influence": influence.ravel(), "std_error": std_error.ravel(),
        "ci_low": low.ravel(), "ci_high": high.ravel(), "z": z.ravel(),
        "significant": (low.ravel() > 0) | (high.ravel() < 0),
        "significant_familywise": np.abs(z.ravel()) > familywise,
    })


def class_influence(aggregates: pd.DataFrame, output: str) -> pd.DataFrame:
    """The ``class_influence.csv`` table: influence of each class on the whole target, best first."""
    rows = aggregates[(aggregates["scope"] == ALL) & (aggregates["output"] == output)]
    columns = ["class_index", "class_name", "influence", "std_error", "ci_low", "ci_high"]
    return rows.sort_values("influence", ascending=False, kind="stable")[columns].reset_index(drop=True)


def ranked_lists(table: pd.DataFrame, top_k: int) -> dict[str, list[dict]]:
    """Most helpful (largest influence first) and most detrimental (most negative first) classes."""
    records = table.to_dict("records")
    helpful = [r for r in records if r["influence"] > 0][:top_k]
    detrimental = [r for r in reversed(records) if r["influence"] < 0][:top_k]
    return {"most_helpful": helpful, "most_detrimental": detrimental}


def misleading(aggregates: pd.DataFrame, output: str) -> pd.DataFrame:
    """(source class, target class) pairs whose influence interval lies below zero.

    Pairs that stay significant after the Bonferroni correction over all pairs come first
    (with many classes, some intervals exclude zero by chance), then by influence.
    """
    rows = aggregates[(aggregates["scope"] != ALL) & (aggregates["output"] == output) & (aggregates["ci_high"] < 0)]
    rows = rows.sort_values(["significant_familywise", "influence"], ascending=[False, True], kind="stable")
    return rows.rename(columns={"scope": "target_class"}).reset_index(drop=True)


def heatmap(aggregates: pd.DataFrame, output: str, target_names: list[str]) -> pd.DataFrame:
    """Source classes (rows) x target classes (columns) of influence on each target class."""
    rows = aggregates[(aggregates["scope"] != ALL) & (aggregates["output"] == output)]
    table = rows.pivot(index="class_name", columns="scope", values="influence")
    order = rows.drop_duplicates("class_name").sort_values("class_index")["class_name"]
    return table.loc[order.tolist(), target_names]


def subpopulations(influence: np.ndarray, labels: np.ndarray, target_names: list[str], class_names: list[str],
                   file_names: list[str], max_examples: int = 8) -> pd.DataFrame:
    """Target examples of each class grouped by their most influential source class.

    One row per (target class, source class) group, largest groups first within a target
    class; ``examples`` lists up to ``max_examples`` test indices of the group, most
    influenced first (the paper's "ostrich-like birds"). Examples whose largest influence
    is not positive belong to no group; ``share`` is relative to the whole target class.
    """
    top = np.nanargmax(np.where(np.isnan(influence), -np.inf, influence), axis=1)
    top_value = influence[np.arange(len(top)), top]
    rows = []
    for k, target in enumerate(target_names):
        # an example no class helps (e.g. one every model gets right: all influences 0) has no
        # "most influential" class; argmax would file it under class 0
        members = np.flatnonzero((labels == k) & (top_value > 0))
        groups = [members[top[members] == c] for c in np.unique(top[members])]
        for group in sorted(groups, key=len, reverse=True):
            group = group[np.argsort(-top_value[group], kind="stable")]
            rows.append({"target_class": target, "source_class": class_names[top[group[0]]],
                         "class_index": int(top[group[0]]), "n_examples": len(group),
                         "share": len(group) / int((labels == k).sum()),
                         "mean_influence": float(top_value[group].mean()),
                         "examples": ";".join(map(str, group[:max_examples].tolist())),
                         "example_files": ";".join(file_names[i] for i in group[:max_examples])})
    return pd.DataFrame(rows, columns=["target_class", "source_class", "class_index", "n_examples", "share",
                                       "mean_influence", "examples", "example_files"])


def leakage_candidates(influence: np.ndarray, std_error: np.ndarray, min_z: float, dominance: float,
                       max_candidates: int) -> pd.DataFrame:
    """Target examples whose influence is dominated by one source class.

    A candidate's top class has ``influence / std_error >= min_z`` and an influence at least
    ``dominance`` times that of the runner-up class (when the runner-up is positive).
    Sorted by that z, at most ``max_candidates``.
    """
    filled = np.where(np.isnan(influence), -np.inf, influence)
    order = np.argsort(-filled, axis=1)[:, :2]
    rows = np.arange(len(influence))
    top, second = filled[rows, order[:, 0]], filled[rows, order[:, 1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = top / std_error[rows, order[:, 0]]
    ok = (z >= min_z) & (top >= dominance * np.maximum(second, 0))
    picked = np.flatnonzero(ok)
    picked = picked[np.argsort(-z[picked], kind="stable")][:max_candidates]
    return pd.DataFrame({"test_index": picked, "class_index": order[picked, 0], "influence": top[picked],
                         "z": z[picked], "runner_up_index": order[picked, 1], "runner_up_influence": second[picked]})


def check_candidates(candidates: pd.DataFrame, test: ImageSet, source: ImageSet, features=None,
                     threshold: float = 0.97) -> pd.DataFrame:
    """Nearest neighbours of each candidate among the images of its dominant source class.

    Pixel space: exact copy (hash) or thumbnail cosine; feature space: cosine of
    ``features(images) -> (N, D)``, centred on the class's mean feature, when given.
    ``verdict`` is "exact copy", "near duplicate" (pixel cosine >= ``threshold``) or
    "no duplicate"; rows are sorted by verdict, then by z.
    """
    out = candidates.copy()
    n = len(out)
    cols = {"test_file": [""] * n, "target_class": [""] * n, "source_class": [""] * n,
            "pixel_nn_index": np.full(n, -1), "pixel_nn_file": [""] * n, "pixel_similarity": np.full(n, np.nan),
            "exact_copy": np.zeros(n, bool), "feature_nn_index": np.full(n, -1), "feature_nn_file": [""] * n,
            "feature_similarity": np.full(n, np.nan)}
    for c in out["class_index"].unique() if n else []:
        where = np.flatnonzero(out["class_index"].to_numpy() == c)
        members = np.flatnonzero(source.labels.numpy() == c)
        queries = test.images[out["test_index"].to_numpy()[where]]
        found = duplicates.search(queries, source.images[members])
        for row, i, s, e in zip(where, found.index, found.similarity, found.exact):
            cols["pixel_nn_index"][row], cols["pixel_similarity"][row], cols["exact_copy"][row] = members[i], s, e
        if features is not None and len(members):
            ref = features(source.images[members]).float()
            centre = ref.mean(0)  # ReLU features are all positive: centre them, or every cosine is near 1
            q, r = _unit(features(queries).float() - centre), _unit(ref - centre)
            index, similarity = duplicates.nearest(q, r)
            for row, i, s in zip(where, index, similarity):
                cols["feature_nn_index"][row], cols["feature_similarity"][row] = members[i], s
    for row in range(n):
        t, c = int(out["test_index"].iloc[row]), int(out["class_index"].iloc[row])
        cols["test_file"][row] = test.file_names[t]
        cols["target_class"][row] = test.class_names[int(test.labels[t])]
        cols["source_class"][row] = source.class_names[c]
        if cols["pixel_nn_index"][row] >= 0:
            cols["pixel_nn_file"][row] = source.file_names[cols["pixel_nn_index"][row]]
        if cols["feature_nn_index"][row] >= 0:
            cols["feature_nn_file"][row] = source.file_names[cols["feature_nn_index"][row]]
    for key, value in cols.items():
        out[key] = value
    rank = np.where(out["exact_copy"], 0, np.where(out["pixel_similarity"] >= threshold, 1, 2))
    out["verdict"] = np.array(["exact copy", "near duplicate", "no duplicate"])[rank]
    order = np.lexsort((-out["z"].to_numpy(), rank))  # copies first, then by z
    return out.iloc[order].reset_index(drop=True)


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.float().reshape(len(x), -1)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def near_duplicates(test: ImageSet, source: ImageSet, threshold: float) -> pd.DataFrame:
    """Every target test image with an exact copy in the source, or a nearest source image whose
    thumbnail cosine is at least ``threshold``; exact copies first, with file names."""
    found = duplicates.search(test.images, source.images)
    rows = [(i, j, 1.0, True) for i, j in found.exact_pairs]
    rows += [(i, int(found.index[i]), float(found.similarity[i]), False)
             for i in np.flatnonzero(~found.exact & (found.similarity >= threshold))]
    table = pd.DataFrame(rows, columns=["test_index", "source_index", "similarity", "exact"])
    table["test_file"] = [test.file_names[i] for i in table["test_index"]]
    table["test_class"] = [test.class_names[int(test.labels[i])] for i in table["test_index"]]
    table["source_file"] = [source.file_names[j] for j in table["source_index"]]
    table["source_class"] = [source.class_names[int(source.labels[j])] for j in table["source_index"]]
    return table.sort_values(["exact", "similarity"], ascending=False, kind="stable").reset_index(drop=True)
