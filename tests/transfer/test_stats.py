"""Spearman's rho with a paired bootstrap interval."""

import numpy as np
import pytest

from dpmodels.transfer import spearman_with_ci


def test_perfectly_monotone_data_gives_one_with_a_tight_interval():
    x = np.arange(8.0)
    rho, low, high = spearman_with_ci(x, np.exp(x), n_boot=500, seed=0)
    assert (rho, low, high) == (1.0, 1.0, 1.0)
    rho, low, high = spearman_with_ci(x, -(x**3), n_boot=500, seed=0)
    assert (rho, low, high) == (-1.0, -1.0, -1.0)


def test_matches_scipy_and_interval_contains_estimate():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    y[:4] = y[0]  # ties
    rho, low, high = spearman_with_ci(x, y, n_boot=1000, seed=2)
    assert rho == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert 0.0 < low < rho < high < 1.0
    assert spearman_with_ci(x, y, n_boot=1000, seed=2) == (rho, low, high)  # seeded


def test_independent_data_interval_covers_zero_mostly():
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(40):
        _, low, high = spearman_with_ci(rng.normal(size=15), rng.normal(size=15), n_boot=300, seed=4)
        covered += low <= 0.0 <= high
    assert covered >= 33  # nominal 95% of 40 = 38; percentile intervals run a bit narrow at n = 15


def test_constant_input_gives_nan_with_a_warning():
    with pytest.warns(RuntimeWarning, match="constant"):
        out = spearman_with_ci(np.ones(6), np.arange(6.0))
    assert all(np.isnan(v) for v in out)


def test_bad_input():
    with pytest.raises(ValueError, match="paired"):
        spearman_with_ci([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 3"):
        spearman_with_ci([1, 2], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        spearman_with_ci([1, 2, np.nan], [1, 2, 3])
    with pytest.raises(ValueError, match="level"):
        spearman_with_ci([1, 2, 3], [1, 2, 3], level=1.5)
