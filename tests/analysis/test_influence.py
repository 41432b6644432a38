"""Influence estimators against naive loop implementations of their formulas."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from sklearn.linear_model import Ridge

from transfer_core.analysis import influence
from transfer_core.config import ConfigError


def random_sweep(n_models=40, n_targets=23, n_classes=7, seed=0, dtype=np.float16):
    rng = np.random.default_rng(seed)
    masks = rng.random((n_models, n_classes)) < 0.5
    masks[0], masks[1] = True, False  # every class both in and out
    outputs = (rng.normal(size=(n_models, n_targets)) * 3 + 1).astype(dtype)
    return masks, outputs


def naive_difference_of_means(masks, outputs):
    """Infl[t, c] = mean_{m: M[m,c]=1} f_m(t) - mean_{m: M[m,c]=0} f_m(t), and its Welch error, by loops."""
    f = np.asarray(outputs, np.float64)
    n_targets, n_classes = f.shape[1], masks.shape[1]
    infl, se = np.zeros((n_targets, n_classes)), np.zeros((n_targets, n_classes))
    for t in range(n_targets):
        for c in range(n_classes):
            kept = [f[m, t] for m in range(len(masks)) if masks[m, c]]
            left = [f[m, t] for m in range(len(masks)) if not masks[m, c]]
            infl[t, c] = np.mean(kept) - np.mean(left)
            se[t, c] = np.sqrt(np.var(kept, ddof=1) / len(kept) + np.var(left, ddof=1) / len(left))
    return infl, se


@pytest.mark.parametrize("dtype", [np.float16, np.float32, bool])
def test_difference_of_means_matches_the_naive_loop(dtype):
    masks, outputs = random_sweep(dtype=np.float32)
    outputs = (outputs > 1).astype(bool) if dtype is bool else outputs.astype(dtype)
    fast = influence.difference_of_means(masks, outputs, chunk_size=5)  # several chunks
    infl, se = naive_difference_of_means(masks, outputs)
    np.testing.assert_allclose(fast.influence, infl, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.std_error, se, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fast.n_in, masks.sum(0))
    np.testing.assert_array_equal(fast.n_out, (~masks).sum(0))


def test_sign_convention_and_missing_classes():
    masks = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], bool)
    outputs = np.array([[5.0], [5.0], [1.0], [1.0]])  # class 0 kept -> higher output
    est = influence.difference_of_means(masks, outputs)
    assert est.influence[0, 0] == pytest.approx(4.0)  # positive = including the class helps
    assert est.influence[0, 1] == pytest.approx(0.0)
    never_out = influence.difference_of_means(np.ones((4, 1), bool), outputs)
    assert np.isnan(never_out.influence).all()


def test_group_means_match_a_loop():
    masks, outputs = random_sweep()
    groups = np.random.default_rng(1).random((outputs.shape[1], 3)) < 0.4
    fast = influence.group_means(outputs, groups, chunk_size=4)
    for g in range(3):
        np.testing.assert_allclose(fast[:, g], outputs[:, groups[:, g]].astype(np.float64).mean(1), rtol=1e-6)


def naive_bootstrap_draws(masks, outputs, weights):
    draws = []
    for w in weights.astype(int):
        rows = np.repeat(np.arange(len(masks)), w)  # the resample, runs drawn w[m] times
        draws.append(naive_difference_of_means(masks[rows], outputs[rows])[0])
    return np.array(draws)


def test_bootstrap_matches_resampling_by_hand(monkeypatch):
    monkeypatch.setattr(influence, "BOOT_BLOCK", 30)  # several blocks of resamples per matrix product
    masks, outputs = random_sweep(n_models=30, n_targets=9, n_classes=5)
    weights = influence.bootstrap_weights(len(masks), 25, seed=3)
    assert weights.shape == (25, 30) and (weights.sum(1) == 30).all()
    naive = naive_bootstrap_draws(masks, outputs, weights)
    draws = influence.bootstrap_draws(masks, outputs, weights)
    np.testing.assert_allclose(draws, naive, rtol=1e-5, atol=1e-5)
    se = influence.bootstrap_std_error(masks, outputs, weights=weights, chunk_size=4)
    np.testing.assert_allclose(se, np.nanstd(naive, axis=0, ddof=1), rtol=1e-3, atol=1e-4)


def test_bootstrap_error_agrees_with_welch_error():
    """Two estimates of one quantity: with many runs they agree within a few percent on average."""
    masks, outputs = random_sweep(n_models=400, n_targets=50, n_classes=6, dtype=np.float32)
    welch = influence.difference_of_means(masks, outputs).std_error
    boot = influence.bootstrap_std_error(masks, outputs, n_boot=300, seed=0)
    assert np.median(boot / welch) == pytest.approx(1.0, abs=0.06)


def test_ridge_matches_sklearn_and_picks_the_best_held_out_penalty():
    rng = np.random.default_rng(0)
    masks = rng.random((80, 6)) < 0.5
    true = rng.normal(size=(6, 11))
    outputs = (2 + masks @ true + rng.normal(size=(80, 11))).astype(np.float16)
    lambdas = np.logspace(-4, 1, 6)
    fit = influence.ridge_datamodel(masks, outputs, lambdas=lambdas, holdout=0.25, seed=2, chunk_size=4)
    train, held = influence.holdout_split(80, 0.25, seed=2)
    y = outputs.astype(np.float64)
    mse = []
    assert set(lambdas) <= set(fit.lambdas)  # the grid may have widened past an edge
    for lam in fit.lambdas:  # sklearn's penalty is on the sum of squares: alpha = lam * n_fit
        model = Ridge(alpha=lam * len(train)).fit(masks[train], y[train])
        mse.append(((model.predict(masks[held]) - y[held]) ** 2).mean())
    np.testing.assert_allclose(fit.holdout_mse, mse, rtol=1e-6)
    assert fit.lam == fit.lambdas[int(np.argmin(mse))]
    full = Ridge(alpha=fit.lam * 80).fit(masks, y)
    np.testing.assert_allclose(fit.coef, full.coef_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fit.intercept, full.intercept_, rtol=1e-4, atol=1e-4)
    assert np.abs(fit.coef - true.T).max() < 0.8  # and it recovers the planted effects


def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), rng.normal(size=30)
    b[:10] = a[:10]
    a[3] = a[4]  # a tie
    assert influence.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic)
    np.testing.assert_allclose(influence.rankdata(a), scipy.stats.rankdata(a))


def test_split_half_stability_rises_with_runs_when_classes_differ():
    rng = np.random.default_rng(0)
    masks = rng.random((400, 12)) < 0.5
    effects = np.linspace(-1, 1, 12)
    signal = (masks @ effects + rng.normal(size=400))[:, None]
    curve = influence.split_half_stability(masks, signal, sizes=[10, 200], repeats=8, seed=0)
    assert curve["n_runs"].tolist() == [10, 200]
    # neighbouring effects differ by 0.18 and the standard error with 200 runs per half is about
    # 0.2, so the halves mostly agree (measured 0.91); with 10 runs per half they barely do (0.18)
    assert curve["spearman_mean"][1] > 0.8 and curve["spearman_mean"][0] < 0.5
    noise = influence.split_half_stability(masks, rng.normal(size=(400, 1)), sizes=[200], repeats=8, seed=0)
    assert abs(noise["spearman_mean"][0]) < 0.35  # no structure: halves do not agree


def test_coverage_says_how_many_runs_are_missing():
    masks = np.zeros((6, 3), bool)
    masks[:, 0] = [1, 1, 1, 0, 0, 0]
    masks[:, 1] = [1, 0, 0, 0, 0, 0]
    masks[:, 2] = [1, 1, 1, 1, 1, 1]
    influence.check_coverage(masks[:, :1], ["a"], min_runs=3)
    with pytest.raises(influence.InsufficientRunsError) as err:
        influence.check_coverage(masks, ["a", "b", "c"], min_runs=3)
    message = str(err.value)
    assert "2 classes fall short" in message
    assert "'b' needs 2 more run(s) with it kept and 0 more without it" in message
    assert "'c' needs 0 more run(s) with it kept and 3 more without it" in message
    assert isinstance(err.value, ConfigError)


def test_bad_shapes_are_refused():
    with pytest.raises(ConfigError, match="outputs must be"):
        influence.difference_of_means(np.ones((4, 2), bool), np.ones((3, 5)))
    with pytest.raises(ConfigError, match="masks must be"):
        influence.difference_of_means(np.ones(4, bool), np.ones((4, 5)))


def test_estimators_are_looked_up_by_name_and_a_new_one_is_one_class_and_one_line(monkeypatch):
    """The registry drives :func:`estimate`: a test double registered under a new name (a naive loop over
    examples and classes, no matrix algebra) is accepted by the settings and gives the estimates."""
    from transfer_core.analysis import AnalysisSettings, estimate

    masks, outputs = random_sweep()
    assert set(influence.ESTIMATORS) == {"dom", "ridge"}
    np.testing.assert_allclose(influence.ESTIMATORS["dom"].fit(masks, outputs).influence,
                               influence.difference_of_means(masks, outputs).influence)
    assert influence.ESTIMATORS["ridge"].fit(masks, outputs).influence.shape == (outputs.shape[1], masks.shape[1])

    class NaiveMeans(influence.Estimator):
        name = "naive"

        def fit(self, masks, outputs):
            masks, outputs = np.asarray(masks), np.asarray(outputs, np.float64)
            infl = np.array([[outputs[masks[:, c], t].mean() - outputs[~masks[:, c], t].mean()
                              for c in range(masks.shape[1])] for t in range(outputs.shape[1])])
            return influence.Influence(infl, np.full_like(infl, 0.1), masks.sum(0), (~masks).sum(0))

    with pytest.raises(ConfigError, match="unknown estimator 'naive'; choose one of dom, ridge"):
        AnalysisSettings(estimator="naive")
    monkeypatch.setitem(influence.ESTIMATORS, "naive", NaiveMeans())
    labels = np.arange(outputs.shape[1]) % 2
    got = estimate(masks, {k: outputs for k in ("margin", "prob", "correct")}, labels, [f"c{i}" for i in
                   range(masks.shape[1])], ["a", "b"], AnalysisSettings(estimator="naive", output="margin",
                                                                       bootstrap=0))
    np.testing.assert_allclose(got.influence, influence.difference_of_means(masks, outputs).influence, rtol=1e-5)
    assert np.allclose(got.std_error, 0.1)  # the double's own errors, not Welch's: it was the one called


def test_runs_for_reliability_predicts_the_agreement_of_bigger_sweeps():
    """Simulate class effects measured with per-run noise: the run count the Spearman-Brown
    extrapolation asks for, from a small sweep's split-half correlation, gives halves that
    agree at the target (Monte Carlo, 400 classes, 200 repeats; margin 0.03)."""
    from transfer_core.analysis.influence import runs_for_reliability
    rng = np.random.default_rng(0)
    effects = rng.normal(size=400)

    def split_half(n_runs):  # Pearson correlation of two independent n-run estimates, averaged
        noise = 6.0 / np.sqrt(n_runs)
        return np.mean([np.corrcoef(effects + noise * rng.normal(size=400),
                                    effects + noise * rng.normal(size=400))[0, 1] for _ in range(200)])

    small = split_half(10)
    assert 0.1 < small < 0.5  # a noisy start, as in real sweeps
    needed = runs_for_reliability(10, small, 0.9)
    assert split_half(int(round(needed))) == pytest.approx(0.9, abs=0.03)
    assert runs_for_reliability(10, 0.95, 0.9) == 10 and runs_for_reliability(10, -0.1) == float("inf")
    with pytest.raises(ConfigError, match="target reliability"):
        runs_for_reliability(10, 0.5, 1.0)


def test_ridge_grid_widens_until_the_penalty_is_interior_or_says_it_is_at_an_edge():
    rng = np.random.default_rng(1)
    masks = rng.random((120, 8)) < 0.5
    weak = 0.3 * rng.normal(size=(8, 40))  # small effects in unit noise: the best penalty is moderate
    outputs = masks @ weak + rng.normal(size=(120, 40))
    narrow = [1e-5, 1e-4]  # far below the optimum: the grid must grow upwards to find it
    fit = influence.ridge_datamodel(masks, outputs, lambdas=narrow, seed=0)
    assert not fit.at_edge and fit.lam > 1e-4 and fit.lambdas.max() > fit.lam
    assert "inside the grid" in fit.edge_note
    forced = influence.ridge_datamodel(masks, outputs, lambdas=narrow, seed=0, widen=False)
    assert forced.at_edge and forced.lam == 1e-4 and "largest value tried" in forced.edge_note
    noise = rng.normal(size=(120, 40))  # no effect at all: held-out error keeps falling as the penalty grows
    null = influence.ridge_datamodel(masks, noise, seed=0)
    assert null.at_edge and null.lam == influence.RIDGE_LIMITS[1] and "by construction" in null.edge_note
