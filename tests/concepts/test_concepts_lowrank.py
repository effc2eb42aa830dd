"""Concepts of a low-rank (factor-analyser) fit: per-draw responsibilities by the Woodbury identity
against dense Gaussians of the same draws, the Bhattacharyya overlap of the plug-in covariances,
and the concept selection end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import multivariate_normal

from dpmodels import DPGMM
from dpmodels.concepts import bhattacharyya_overlap, draw_responsibilities, select_concepts
from tests.conftest import correlated_clusters

D, RANK = 8, 2


@pytest.fixture(scope="module")
def fitted():
    X = correlated_clusters(150, 0, D, RANK)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small fit: far faster on one thread than on two busy ones
    try:
        model = DPGMM(covariance="lowrank", rank=RANK, truncation=8, seed=0).fit(X)
    finally:
        torch.set_num_threads(threads)
    return model.posterior_, X


def test_draw_responsibilities_match_dense_gaussians(fitted):
    post, X = fitted
    comps = np.arange(4)
    x = X[::7].astype(np.float64)
    got = draw_responsibilities(post, x, comps, num_draws=3, seed=5)
    with torch.random.fork_rng(devices=[]):
        d = post.sample(3, seed=5, dtype=torch.float64)
    assert got.shape == (3, len(x), len(comps))
    for s in range(3):
        w = d["loadings"][s, 0, comps].double().numpy()  # (K̂, D, r)
        cov = w @ w.transpose(0, 2, 1) + np.stack([np.diag(v) for v in d["covariances"][s, 0, comps].numpy()])
        mu = d["means"][s, 0, comps].double().numpy()
        log_joint = np.stack([multivariate_normal(mu[k], cov[k]).logpdf(x) for k in range(len(comps))], -1)
        ref = softmax(d["log_weights"][s, 0, comps].double().numpy() + log_joint, axis=-1)
        np.testing.assert_allclose(got[s], ref, rtol=1e-7, atol=1e-10)


def test_bhattacharyya_overlap_of_lowrank_covariances(fitted):
    post, _ = fitted
    cov = post.covariances[0, :3].double().numpy()  # plug-in W W^T + diag(noise)  (3, D, D)
    mu = post.means[0, :3].double().numpy()
    assert cov.shape == (3, D, D)
    overlap = bhattacharyya_overlap(mu, cov)
    i, j = 0, 1
    avg = 0.5 * (cov[i] + cov[j])
    diff = mu[i] - mu[j]
    d_b = diff @ np.linalg.solve(avg, diff) / 8 + 0.5 * (
        np.linalg.slogdet(avg)[1] - 0.5 * (np.linalg.slogdet(cov[i])[1] + np.linalg.slogdet(cov[j])[1])
    )
    np.testing.assert_allclose(overlap[i, j], np.exp(-d_b), rtol=1e-9)
    np.testing.assert_allclose(np.diag(overlap), 1.0)
    assert (overlap[np.triu_indices(3, 1)] < 1e-3).all()  # planted clusters far apart


@pytest.mark.parametrize("criterion", ["bhattacharyya", "entropy"])
def test_select_concepts_on_a_lowrank_fit(fitted, criterion):
    post, X = fitted
    sel = select_concepts(post, X, criterion=criterion, num_draws=8, draw_points=200, seed=0)
    K_hat = int(post.n_active[0])
    assert sel.hierarchy.num_components == K_hat >= 3
    assert 1 <= sel.k <= K_hat and sel.k_draws.shape == (8,)
    assert sel.k_interval[0] <= sel.k_interval[1]
