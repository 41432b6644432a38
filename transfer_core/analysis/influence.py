"""Class influences from many subset runs: estimators, uncertainty, and rank stability.

Pure numpy. Shapes used throughout:
  ``masks``    ``(n_models, n_classes)`` bool: ``masks[m, c]`` is True when model m kept source class c;
  ``outputs``  ``(n_models, n_targets)`` one recorded output per model and target example
               (margin / prob as float16 or float32, correct as bool; upcast chunk by chunk);
  influences ``(n_targets, n_classes)``.

**Sign convention:** positive influence = including the source class *helps* the target
example (raises its margin / probability / correctness).

Estimators (:class:`Estimator` subclasses; ``ESTIMATORS`` maps the names that the
``analysis.estimator`` setting accepts to them, and :func:`~transfer_core.analysis.estimate.estimate`
looks the chosen one up there):
  ``dom``    the paper's difference of means, ``Infl[t, c] = mean_{m: M[m,c]=1} f_m(t) -
             mean_{m: M[m,c]=0} f_m(t)``, with Welch standard errors;
  ``ridge``  a linear datamodel ``f_m(t) ~ b_t + M[m] @ w_t`` fitted by ridge regression, the
             regularisation chosen on held-out runs; ``w[t, c]`` plays the role of ``Infl[t, c]``.
To add one: subclass :class:`Estimator` (``fit``; ``draws`` and ``bootstrap_std_error`` have
generic versions), add one line to ``ESTIMATORS``, and test it against a naive loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transfer_core.config import ConfigError

DEFAULT_CHUNK = 2048  # target examples per block: bounds memory to ~chunk * n_classes * n_boot floats


class InsufficientRunsError(ConfigError):
    """Too few runs with some class kept or left out to estimate its influence."""


@dataclass
class Influence:
    """Difference-of-means influences and their Welch standard errors, ``(n_targets, n_classes)``."""

    influence: np.ndarray
    std_error: np.ndarray
    n_in: np.ndarray  # (n_classes,) models that kept each class
    n_out: np.ndarray  # (n_classes,) models that left it out


def _as_masks(masks) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 2:
        raise ConfigError(f"masks must be (n_models, n_classes), got shape {masks.shape}")
    return masks.astype(bool)


def _check_pair(masks: np.ndarray, outputs: np.ndarray) -> None:
    if outputs.ndim != 2 or len(outputs) != len(masks):
        raise ConfigError(f"outputs must be (n_models, n_targets) with n_models={len(masks)}, "
                          f"got shape {outputs.shape}")


def check_coverage(masks, class_names: list[str], min_runs: int) -> None:
    """Raise :class:`InsufficientRunsError` unless every class is kept in, and left out of,
    at least ``min_runs`` models; the message says how many runs each short class lacks."""
    masks = _as_masks(masks)
    n_in, n_out = masks.sum(0), (~masks).sum(0)
    short = [(name, max(0, min_runs - i), max(0, min_runs - o))
             for name, i, o in zip(class_names, n_in, n_out) if i < min_runs or o < min_runs]
    if not short:
        return
    parts = [f"{name!r} needs {mi} more run(s) with it kept and {mo} more without it" for name, mi, mo in short[:5]]
    more = f" (and {len(short) - 5} more classes)" if len(short) > 5 else ""
    raise InsufficientRunsError(
        f"{len(masks)} runs are too few: each source class must be kept in and left out of at least "
        f"{min_runs} runs, but {len(short)} classes fall short: {'; '.join(parts)}{more}; run more models "
        f"in the sweep (about {2 * max(max(mi, mo) for _, mi, mo in short)} more) or lower --min-runs")


def difference_of_means(masks, outputs, chunk_size: int = DEFAULT_CHUNK) -> Influence:
    """The paper's estimator with Welch standard errors, as two matrix products per chunk.

    ``Infl[t, c] = S_in[t, c] / n_in[c] - (S[t] - S_in[t, c]) / n_out[c]`` with
    ``S_in = F.T @ M``; the standard error is ``sqrt(var_in / n_in + var_out / n_out)`` with
    unbiased variances from the sums of squares. Outputs are centred per target before
    squaring (exact, and it keeps the sums well conditioned). Classes never kept or never
    left out get NaN.
    """
    masks = _as_masks(masks)
    outputs = np.asarray(outputs)
    _check_pair(masks, outputs)
    m = masks.astype(np.float64)
    n_in, n_out = m.sum(0), len(m) - m.sum(0)
    n_targets = outputs.shape[1]
    influence = np.empty((n_targets, masks.shape[1]), np.float32)
    std_error = np.empty_like(influence)
    with np.errstate(divide="ignore", invalid="ignore"):
        for lo in range(0, n_targets, chunk_size):
            f = outputs[:, lo:lo + chunk_size].astype(np.float64)
            f -= f.mean(0)
            s_in, s = f.T @ m, f.sum(0)[:, None]
            q_in, q = (f * f).T @ m, (f * f).sum(0)[:, None]
            mean_in, mean_out = s_in / n_in, (s - s_in) / n_out
            var_in = (q_in - n_in * mean_in ** 2) / (n_in - 1)
            var_out = (q - q_in - n_out * mean_out ** 2) / (n_out - 1)
            influence[lo:lo + chunk_size] = mean_in - mean_out
            std_error[lo:lo + chunk_size] = np.sqrt(np.maximum(var_in, 0) / n_in + np.maximum(var_out, 0) / n_out)
    return Influence(influence, std_error, n_in.astype(int), n_out.astype(int))


def group_means(outputs, groups: np.ndarray, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """Per-model mean output over groups of targets: ``(n_models, n_groups)`` float64.

    ``groups`` is ``(n_targets, n_groups)`` bool (target t belongs to group g). Because the
    difference of means is linear in f, the influence of a class on a group (e.g. on target
    accuracy, or on one target class) is the difference of means of these group means.
    """
    outputs = np.asarray(outputs)
    weights = np.asarray(groups, np.float64)
    weights = weights / np.maximum(weights.sum(0), 1)
    out = np.zeros((len(outputs), weights.shape[1]))
    for lo in range(0, outputs.shape[1], chunk_size):
        out += outputs[:, lo:lo + chunk_size].astype(np.float64) @ weights[lo:lo + chunk_size]
    return out


def bootstrap_weights(n_models: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """Resampling counts ``(n_boot, n_models)``: row b says how often each run is drawn."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_models, np.full(n_models, 1.0 / n_models), size=n_boot).astype(np.float32)


def bootstrap_draws(masks, outputs, weights: np.ndarray) -> np.ndarray:
    """Difference-of-means influences of every bootstrap resample: ``(n_boot, n_targets, n_classes)``.

    Meant for few targets (aggregates); use :func:`bootstrap_std_error` for many. A class
    never kept (or never left out) in a resample gives NaN in that draw.
    """
    masks = _as_masks(masks)
    f = np.asarray(outputs, np.float64)
    _check_pair(masks, f)
    f = f - f.mean(0)
    w = np.asarray(weights, np.float64)
    m = masks.astype(np.float64)
    n_in = w @ m  # (B, n_classes)
    n_out = w.sum(1)[:, None] - n_in
    s_in = np.stack([(w * f[:, t]) @ m for t in range(f.shape[1])], 1)  # (B, n_targets, n_classes)
    s = (w @ f)[:, :, None]  # (B, n_targets, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return s_in / n_in[:, None] - (s - s_in) / n_out[:, None]


BOOT_BLOCK = 25_000  # resamples x classes per matrix product: bounds the design to n_models x 25,000 floats


def bootstrap_std_error(masks, outputs, n_boot: int = 100, seed: int = 0, chunk_size: int = 1024,
                        weights: np.ndarray | None = None) -> np.ndarray:
    """Bootstrap-over-runs standard error of every influence, ``(n_targets, n_classes)`` float32.

    Blocks of resamples are evaluated at once as one float32 matrix product per chunk of
    targets, ``F[:, chunk].T @ D`` with ``D[m, b*C + c] = w[b, m] * M[m, c]``; draws where a
    class is never kept or never left out are skipped.
    """
    masks = _as_masks(masks)
    outputs = np.asarray(outputs)
    _check_pair(masks, outputs)
    w = bootstrap_weights(len(masks), n_boot, seed) if weights is None else np.asarray(weights, np.float32)
    n_boot, n_classes = len(w), masks.shape[1]
    m = masks.astype(np.float32)
    n_in = w @ m  # (B, C)
    n_out = w.sum(1)[:, None] - n_in
    valid = (n_in > 0) & (n_out > 0)
    inv_in = np.where(valid, 1 / np.maximum(n_in, 1), 0).astype(np.float32)
    inv_out = np.where(valid, 1 / np.maximum(n_out, 1), 0).astype(np.float32)
    n_valid = valid.sum(0)  # (C,)
    block = max(1, BOOT_BLOCK // n_classes)
    designs = [(b0, np.ascontiguousarray((w[b0:b0 + block, :, None] * m[None]).transpose(1, 0, 2)
                                         .reshape(len(masks), -1))) for b0 in range(0, n_boot, block)]
    result = np.empty((outputs.shape[1], n_classes), np.float32)
    for lo in range(0, outputs.shape[1], chunk_size):
        f = outputs[:, lo:lo + chunk_size].astype(np.float32)
        f -= f.mean(0)
        total = f.T @ w.T  # (chunk, B)
        sums = np.zeros((f.shape[1], n_classes), np.float32)
        squares = np.zeros_like(sums)
        for b0, design in designs:
            s_in = (f.T @ design).reshape(f.shape[1], -1, n_classes)  # (chunk, block, C)
            b1 = b0 + s_in.shape[1]
            draws = s_in * inv_in[b0:b1] - (total[:, b0:b1, None] - s_in) * inv_out[b0:b1]  # zero where invalid
            sums += draws.sum(1)
            squares += (draws * draws).sum(1)
        mean, mean_sq = sums / np.maximum(n_valid, 1), squares / np.maximum(n_valid, 1)
        variance = np.maximum(mean_sq - mean * mean, 0) * n_valid / np.maximum(n_valid - 1, 1)
        result[lo:lo + chunk_size] = np.sqrt(variance)
    result[:, n_valid < 2] = np.nan
    return result


@dataclass
class Ridge:
    """A ridge datamodel: ``f_m(t) ~ intercept[t] + masks[m] @ coef[t]``; ``coef`` ``(n_targets, n_classes)``."""

    coef: np.ndarray
    intercept: np.ndarray  # (n_targets,)
    lam: float  # chosen penalty, per run (the fitted objective is mean squared error + lam * |w|^2)
    lambdas: np.ndarray  # the grid tried, ascending
    holdout_mse: np.ndarray  # (n_lambdas,) held-out mean squared error, averaged over targets
    at_edge: bool = False  # the chosen penalty is the smallest or largest tried (held-out error still falling)

    @property
    def edge_note(self) -> str:
        """What the choice means for the comparison with the difference of means, in one sentence."""
        if not self.at_edge:
            return "the penalty was chosen inside the grid, so the datamodel is a fit of its own"
        if self.lam == self.lambdas.max():
            return ("the penalty sits at the largest value tried, where ridge coefficients are proportional to the "
                    "difference of means: their agreement holds by construction and corroborates nothing")
        return "the penalty sits at the smallest value tried: the datamodel is barely regularised"


def _ridge_solver(x: np.ndarray):
    """Centre ``x`` and return (mean, eigenvalues, eigenvectors) of its Gram matrix."""
    mean = x.mean(0)
    xc = x - mean
    s, v = np.linalg.eigh(xc.T @ xc)
    return mean, np.maximum(s, 0), v


def holdout_split(n_models: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (fit, held-out) run indices, ``round(holdout * n_models)`` (at least 1) held out."""
    if not 0 < holdout < 1 or n_models < 3:
        raise ConfigError(f"a held-out split needs 0 < holdout < 1 and at least 3 runs, got {holdout} and {n_models}")
    order = np.random.default_rng(seed).permutation(n_models)
    n_held = min(n_models - 2, max(1, int(round(holdout * n_models))))
    return order[n_held:], order[:n_held]


def _holdout_mse(x: np.ndarray, outputs: np.ndarray, fit: np.ndarray, held: np.ndarray, lambdas: np.ndarray,
                 chunk_size: int) -> np.ndarray:
    """Held-out mean squared error ``(n_lambdas,)`` of ridge fits on the ``fit`` runs, averaged over targets."""
    mse = np.zeros(len(lambdas))
    mean_x, s, v = _ridge_solver(x[fit])
    xh = (x[held] - mean_x) @ v  # (n_held, C) in the eigenbasis
    for lo in range(0, outputs.shape[1], chunk_size):
        y = outputs[:, lo:lo + chunk_size].astype(np.float64)
        yf = y[fit] - y[fit].mean(0)
        proj = v.T @ ((x[fit] - mean_x).T @ yf)  # (C, chunk)
        for i, lam in enumerate(lambdas):
            pred = xh @ (proj / (s + lam * len(fit))[:, None]) + y[fit].mean(0)
            mse[i] += ((y[held] - pred) ** 2).sum()
    return mse / (len(held) * outputs.shape[1])


RIDGE_GRID = np.logspace(-4, 1, 11)  # penalties per run tried first
RIDGE_LIMITS = (1e-8, 1e6)  # how far the grid widens while the held-out error still falls at an edge


def ridge_datamodel(masks, outputs, lambdas=None, holdout: float = 0.2, seed: int = 0,
                    chunk_size: int = DEFAULT_CHUNK, widen: bool = True) -> Ridge:
    """Fit one ridge regression per target on the masks, sharing one penalty for all targets.

    The penalty (per run: ``lam * n_models`` on the sum of squares) is the one with the
    lowest mean squared error on a random ``holdout`` share of the runs, after fitting on
    the rest; the model is then refitted on all runs. When the best penalty is at an edge of
    the grid and ``widen``, the grid grows past that edge by factors of 10 (up to
    :data:`RIDGE_LIMITS`) until the choice is interior; ``Ridge.at_edge`` says when it never is.
    """
    masks = _as_masks(masks)
    outputs = np.asarray(outputs)
    _check_pair(masks, outputs)
    x = masks.astype(np.float64)
    lambdas = np.sort(np.asarray(lambdas if lambdas is not None else RIDGE_GRID, np.float64))
    fit, held = holdout_split(len(x), holdout, seed)
    mse = _holdout_mse(x, outputs, fit, held, lambdas, chunk_size)
    while widen:
        best_index = int(np.argmin(mse))
        if best_index == len(lambdas) - 1 and lambdas[-1] * 10 <= RIDGE_LIMITS[1]:
            extra = np.array([lambdas[-1] * 10])
        elif best_index == 0 and lambdas[0] / 10 >= RIDGE_LIMITS[0]:
            extra = np.array([lambdas[0] / 10])
        else:
            break
        extra_mse = _holdout_mse(x, outputs, fit, held, extra, chunk_size)
        lambdas, mse = np.concatenate([lambdas, extra]), np.concatenate([mse, extra_mse])
        order = np.argsort(lambdas)
        lambdas, mse = lambdas[order], mse[order]
    best_index = int(np.argmin(mse))
    best = float(lambdas[best_index])
    mean_x, s, v = _ridge_solver(x)
    coef = np.empty((outputs.shape[1], x.shape[1]), np.float32)
    intercept = np.empty(outputs.shape[1], np.float32)
    for lo in range(0, outputs.shape[1], chunk_size):
        y = outputs[:, lo:lo + chunk_size].astype(np.float64)
        w = v @ ((v.T @ ((x - mean_x).T @ (y - y.mean(0)))) / (s + best * len(x))[:, None])  # (C, chunk)
        coef[lo:lo + chunk_size] = w.T
        intercept[lo:lo + chunk_size] = y.mean(0) - mean_x @ w
    return Ridge(coef, intercept, best, lambdas, mse, at_edge=best_index in (0, len(lambdas) - 1))


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks (1 = smallest) of a vector, ties getting their average rank."""
    x = np.asarray(x, np.float64)
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts + 1  # rank of the first copy of each distinct value
    return (first + (counts - 1) / 2)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two vectors, ignoring entries that are NaN in either."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra, rb = rankdata(a[ok]), rankdata(b[ok])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def split_half_stability(masks, group_outputs, sizes=None, repeats: int = 5, seed: int = 0,
                         estimator: "Estimator | None" = None) -> dict[str, np.ndarray]:
    """How the ranking of classes stabilises as runs are added.

    For each half size n, draw two *disjoint* random sets of n runs, estimate the class
    influences on every group (``group_outputs`` ``(n_models, n_groups)``, e.g. from
    :func:`group_means`) from each, and take the Spearman correlation of the two class
    rankings, averaged over groups; repeated ``repeats`` times. ``estimator``: default the difference of means.

    Returns ``{"n_runs": (S,), "spearman_mean": (S,), "spearman_std": (S,)}`` where n_runs is
    the number of runs per half.
    """
    masks = _as_masks(masks)
    g = np.asarray(group_outputs, np.float64)
    half = len(masks) // 2
    if sizes is None:
        sizes = np.unique(np.geomspace(min(8, half), half, num=8).astype(int)) if half >= 2 else np.array([], int)
    rng = np.random.default_rng(seed)
    means, stds = [], []
    for n in sizes:
        values = []
        for _ in range(repeats):
            order = rng.permutation(len(masks))
            a, b = order[:n], order[n:2 * n]
            fit = (estimator or ESTIMATORS["dom"]).fit
            ia, ib = fit(masks[a], g[a]).influence, fit(masks[b], g[b]).influence
            values.append(np.nanmean([spearman(ia[k], ib[k]) for k in range(g.shape[1])]))
        means.append(np.nanmean(values))
        stds.append(np.nanstd(values))
    return {"n_runs": np.asarray(sizes, int), "spearman_mean": np.asarray(means), "spearman_std": np.asarray(stds)}


class Estimator:
    """A way to fit influences ``(n_targets, n_classes)`` from ``masks`` and ``outputs``.

    Subclasses implement :meth:`fit`; the bootstrap methods resample runs and refit, which
    subclasses may replace with something faster. ``has_std_error``: whether :meth:`fit` gives
    standard errors (else intervals need the bootstrap).
    """

    name = ""
    has_std_error = True

    def fit(self, masks, outputs) -> Influence:
        raise NotImplementedError

    def draws(self, masks, outputs, weights: np.ndarray) -> np.ndarray:
        """Influences of every bootstrap resample, ``(n_boot, n_targets, n_classes)``; row b of ``weights``
        ``(n_boot, n_models)`` counts how often each run is drawn. For few targets (aggregates)."""
        masks, outputs = _as_masks(masks), np.asarray(outputs)
        runs = np.arange(len(masks))
        out = []
        for row in np.asarray(weights):
            index = np.repeat(runs, row.astype(int))
            with np.errstate(divide="ignore", invalid="ignore"):
                out.append(self.fit(masks[index], outputs[index]).influence)
        return np.stack(out)

    def bootstrap_std_error(self, masks, outputs, weights: np.ndarray, chunk_size: int = 256) -> np.ndarray:
        """Standard deviation over resamples of every influence, ``(n_targets, n_classes)`` float32."""
        outputs = np.asarray(outputs)
        result = np.empty((outputs.shape[1], np.shape(masks)[1]), np.float32)
        for lo in range(0, outputs.shape[1], chunk_size):
            result[lo:lo + chunk_size] = np.nanstd(self.draws(masks, outputs[:, lo:lo + chunk_size], weights), 0,
                                                   ddof=1)
        return result


class DifferenceOfMeans(Estimator):
    """The paper's estimator (:func:`difference_of_means`), with Welch standard errors and vectorised bootstraps."""

    name = "dom"

    def fit(self, masks, outputs) -> Influence:
        return difference_of_means(masks, outputs)

    def draws(self, masks, outputs, weights: np.ndarray) -> np.ndarray:
        return bootstrap_draws(masks, outputs, weights)

    def bootstrap_std_error(self, masks, outputs, weights: np.ndarray, chunk_size: int = 1024) -> np.ndarray:
        return bootstrap_std_error(masks, outputs, weights=weights, chunk_size=chunk_size)


class RidgeDatamodel(Estimator):
    """Ridge coefficients as influences (:func:`ridge_datamodel`); no standard errors, so intervals need the
    bootstrap. Each resample chooses its own penalty on its own held-out runs."""

    name = "ridge"
    has_std_error = False

    def fit(self, masks, outputs) -> Influence:
        masks = _as_masks(masks)
        coef = ridge_datamodel(masks, outputs).coef
        n_in = masks.sum(0)
        return Influence(coef, np.full_like(coef, np.nan), n_in, len(masks) - n_in)


ESTIMATORS: dict[str, Estimator] = {"dom": DifferenceOfMeans(), "ridge": RidgeDatamodel()}


def runs_for_reliability(n_runs: int, split_half: float, target: float = 0.9) -> float:
    """Runs whose class ranking would correlate ``target`` with an independent replicate.

    ``split_half`` is the correlation of two rankings from ``n_runs`` runs each (the last
    point of :func:`split_half_stability`). The Spearman-Brown prophecy formula extrapolates
    it: a ranking from ``m * n_runs`` runs has reliability ``m r / (1 + (m - 1) r)``; solved
    for ``target``, ``m = target (1 - r) / (r (1 - target))``. Infinite when ``r <= 0``.
    An extrapolation that assumes independent noise per run; treat it as an order of magnitude.
    """
    if not 0 < target < 1:
        raise ConfigError(f"target reliability must lie in (0, 1), got {target}")
    if not np.isfinite(split_half) or split_half <= 0:
        return float("inf")
    if split_half >= target:
        return float(n_runs)
    return float(n_runs * target * (1 - split_half) / (split_half * (1 - target)))
