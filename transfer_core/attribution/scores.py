"""An ensemble's attribution: TRAK's average over models, class influences with bootstrap intervals, top images.

For a target output ``f`` (a group's mean margin, or one example's) and source example ``i``, model ``m``
gives ``a_m(i) = phi_f^T (Phi_m^T Phi_m)^-1 phi_i`` and ``Q_m(i) = 1 - p_m(i)``. As in TRAK, the ensemble's
score is the product of the two averages, over the models ``m`` that attribute to ``i``:

    score(i) = mean_m a_m(i) * mean_m Q_m(i)

**Sign: positive = including the source image helps the target output** (raises its margin). A class's
influence is the sum of its images' scores: the linearised change of the target output when the class is
added; with subset members, a class's images are scored only by the models that kept it (NaN if none did).
The units are margin units of TRAK's linearisation, not points of accuracy: compare rankings, not values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import spearmanr


@dataclass
class TargetScores:
    """One target split's per-model scores: ``sums[m] (n_m, n_groups)`` on each group's summed output,
    ``examples[m] (n_m, T)`` on each ``per_example`` example's output (rows as the model's ``rows``)."""

    name: str
    group_names: list[str]
    group_sizes: np.ndarray  # (n_groups,)
    per_example: np.ndarray  # (T,) indices into the target split
    sums: list[np.ndarray]
    examples: list[np.ndarray]
    file_names: list[str] = field(default_factory=list)


class Attribution:
    """Scores of an ensemble of M models on a source set of ``n_source`` images in ``n_classes`` classes.

    ``rows[m] (n_m,)``, ``q[m] (n_m,)``: the source images model ``m`` attributes to and its ``1 - p`` on them;
    ``infos[m]``: what the model records (kind, index, seed, ``train_cpu_s``, ``featurize_cpu_s``, ...).
    """

    def __init__(self, source_labels: np.ndarray, class_names: list[str], file_names: list[str],
                 rows: list[np.ndarray], q: list[np.ndarray], targets: dict[str, TargetScores], infos: list[dict]):
        self.labels, self.class_names, self.file_names = np.asarray(source_labels), class_names, file_names
        self.rows, self.targets, self.infos = rows, targets, infos
        self.n_models, n = len(rows), len(self.labels)
        self.present = np.zeros((self.n_models, n), dtype=bool)
        self.q = np.zeros((self.n_models, n))
        for m, (r, qm) in enumerate(zip(rows, q)):
            self.present[m, r] = True
            self.q[m, r] = qm
        self.classes = np.zeros((n, len(class_names)))  # one-hot: image -> class
        self.classes[np.arange(n), self.labels] = 1.0

    # -- per source image -----------------------------------------------------------------------------------------
    def _target(self, target: str) -> TargetScores:
        if target not in self.targets:
            raise KeyError(f"no target {target!r}; featurized: {', '.join(self.targets)}")
        return self.targets[target]

    def _group_columns(self, t: TargetScores, groups) -> np.ndarray:
        if groups is None:
            return np.arange(len(t.group_names))
        unknown = [g for g in groups if g not in t.group_names]
        if unknown:
            raise KeyError(f"target {t.name!r} has no groups {unknown}; it has {t.group_names}")
        return np.array([t.group_names.index(g) for g in groups])

    def per_model(self, target: str, groups=None) -> np.ndarray:
        """``(M, n_source)``: each model's ``a_m(i)`` on the mean output over ``groups`` (default all) of
        ``target``; 0 where the model does not attribute to ``i`` (see :attr:`present`)."""
        t = self._target(target)
        cols = self._group_columns(t, groups)
        size = t.group_sizes[cols].sum()
        out = np.zeros(self.present.shape)
        for m, (r, s) in enumerate(zip(self.rows, t.sums)):
            out[m, r] = s[:, cols].sum(1) / size
        return out

    def _combine(self, a: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """TRAK's ensemble ``(B, n_source)`` for model weights ``(B, M)``: mean a times mean Q, NaN where no model."""
        count = weights @ self.present
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, (weights @ a) / count * (weights @ self.q) / count, np.nan)

    def source_scores(self, target: str, groups=None, models=None) -> np.ndarray:
        """``(n_source,)`` ensemble score of each source image on the mean output of ``groups``; NaN if unscored."""
        return self._combine(self.per_model(target, groups), self._weights(models)[None])[0]

    def _weights(self, models) -> np.ndarray:
        weights = np.zeros(self.n_models)
        weights[np.arange(self.n_models) if models is None else np.asarray(models, dtype=int)] = 1.0
        return weights

    # -- per class ------------------------------------------------------------------------------------------------
    def _classes(self, scores: np.ndarray) -> np.ndarray:
        """Class sums ``(..., n_classes)`` of image scores ``(..., n_source)``; NaN if any image is unscored."""
        missing = np.isnan(scores)
        sums = np.where(missing, 0.0, scores) @ self.classes
        return np.where(missing.astype(float) @ self.classes > 0, np.nan, sums)

    def class_influence(self, target: str, groups=None, models=None) -> np.ndarray:
        """``(n_classes,)``: the summed score of each class's images on the mean output of ``groups``."""
        return self._classes(self.source_scores(target, groups, models))

    def class_ranking(self, target: str, groups=None, split: str | None = None, bootstrap: int = 200,
                      confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
        """The class ranking in the format of ``class_influence.csv``, most helpful first.

        Columns ``class_index, class_name, influence, std_error, ci_low, ci_high, split``. ``std_error`` is the
        standard deviation of the influence over ``bootstrap`` resamples of the models (with replacement),
        ``ci_low``/``ci_high`` their percentile interval at ``confidence``; NaN with one model or
        ``bootstrap=0``. ``split`` labels the rows (default: the target's name).
        """
        influence = self.class_influence(target, groups)
        std_error = low = high = np.full(len(self.class_names), np.nan)
        if bootstrap and self.n_models > 1:
            rng = np.random.default_rng(seed)
            weights = rng.multinomial(self.n_models, np.full(self.n_models, 1 / self.n_models), size=bootstrap)
            draws = self._classes(self._combine(self.per_model(target, groups), weights.astype(float)))
            std_error = np.nanstd(draws, axis=0, ddof=1)
            tail = (1 - confidence) / 2 * 100
            low, high = np.nanpercentile(draws, [tail, 100 - tail], axis=0)
        table = pd.DataFrame({"class_index": np.arange(len(self.class_names)), "class_name": self.class_names,
                              "influence": influence, "std_error": std_error, "ci_low": low, "ci_high": high,
                              "split": split or target})
        return table.sort_values("influence", ascending=False, kind="stable", na_position="last").reset_index(
            drop=True)

    def split_half(self, target: str, groups=None, per_half: int | None = None, n_splits: int = 20,
                   seed: int = 0) -> np.ndarray:
        """Spearman correlations ``(n_splits,)`` between the class rankings of two disjoint random sets of
        ``per_half`` models each (default ``M // 2``), over the classes both score."""
        per_half = per_half or self.n_models // 2
        if per_half < 1 or 2 * per_half > self.n_models:
            raise ValueError(f"two disjoint halves of {per_half} models need {2 * per_half}; have {self.n_models}")
        rng = np.random.default_rng(seed)
        a = self.per_model(target, groups)
        out = []
        for _ in range(n_splits):
            order = rng.permutation(self.n_models)
            weights = np.zeros((2, self.n_models))
            weights[0, order[:per_half]] = weights[1, order[per_half:2 * per_half]] = 1.0
            first, second = self._classes(self._combine(a, weights))
            out.append(spearman(first, second))
        return np.array(out)

    # -- per target example ---------------------------------------------------------------------------------------
    def example_scores(self, target: str) -> np.ndarray:
        """``(n_source, T)`` ensemble scores of every source image on each ``per_example`` target's margin."""
        t = self._target(target)
        total = np.zeros((len(self.labels), len(t.per_example)))
        for r, s in zip(self.rows, t.examples):
            total[r] += s
        count = self.present.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count[:, None] > 0, total / count[:, None] * (self.q.sum(0) / count)[:, None], np.nan)

    def top_sources(self, target: str, k: int = 10) -> pd.DataFrame:
        """Per ``per_example`` target example, its ``k`` highest-scoring source images.

        Columns ``target_index, target_file, rank (1 = highest), source_index (into the source set),
        source_file, source_class, score``.
        """
        t = self._target(target)
        scores = self.example_scores(target)
        frames = []
        for j, index in enumerate(t.per_example):
            column = np.nan_to_num(scores[:, j], nan=-np.inf)
            top = np.argsort(-column, kind="stable")[:k]
            frames.append(pd.DataFrame({
                "target_index": int(index), "target_file": t.file_names[index] if t.file_names else "",
                "rank": np.arange(1, len(top) + 1), "source_index": top,
                "source_file": [self.file_names[i] for i in top],
                "source_class": [self.class_names[self.labels[i]] for i in top], "score": scores[top, j]}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            columns=["target_index", "target_file", "rank", "source_index", "source_file", "source_class", "score"])

    def source_rank(self, target: str, target_index: int, source_index: int) -> int:
        """Rank (1 = highest score) of source image ``source_index`` among all scored source images for the
        ``per_example`` target example ``target_index``."""
        t = self._target(target)
        where = np.flatnonzero(t.per_example == target_index)
        if not len(where):
            raise KeyError(f"target example {target_index} of {target!r} was not scored per example")
        column = self.example_scores(target)[:, where[0]]
        if np.isnan(column[source_index]):
            raise ValueError(f"source image {source_index} was scored by no model")
        return int(np.sum(np.nan_to_num(column, nan=-np.inf) > column[source_index]) + 1)

    # -- cost -----------------------------------------------------------------------------------------------------
    def cpu_seconds(self) -> dict[str, float]:
        """Process CPU seconds (every thread) of training and featurizing the ensemble's models."""
        train = float(sum(i.get("train_cpu_s", 0.0) for i in self.infos))
        featurize = float(sum(i.get("featurize_cpu_s", 0.0) for i in self.infos))
        return {"train": train, "featurize": featurize, "total": train + featurize}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two class scores ``(n_classes,)`` over the classes finite in both."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)
