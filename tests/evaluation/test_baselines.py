"""Baselines find K on well-separated data; compare_methods scores all methods on one layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from dpmodels import DPGMM
from dpmodels.activations import LayerActivations, LayerGeometry
from dpmodels.evaluation import (
    bayesian_gmm,
    compare_methods,
    evaluation_table,
    kmeans_fixed,
    kmeans_silhouette,
    nmf_factorization,
)


def blobs(n_per: int = 150, k: int = 4, d: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = 8.0 * np.eye(k, d) if k <= d else rng.normal(0, 8.0, (k, d))
    truth = np.repeat(np.arange(k), n_per)
    return centres[truth] + rng.normal(0, 0.7, (k * n_per, d)), truth


@pytest.mark.parametrize("seed", [0, 1])
def test_kmeans_and_bgmm_find_k_on_separated_blobs(seed):
    x, truth = blobs(k=4, d=4, seed=seed)
    sil = kmeans_silhouette(x, k_max=8, seed=seed)
    assert sil.k_hat == 4 and not sil.oracle and adjusted_rand_score(truth, sil.labels) > 0.99
    assert set(sil.info["silhouette"]) == set(range(2, 9))
    orc = kmeans_fixed(x, 4, seed=seed)
    assert orc.oracle and orc.k_hat == 4 and adjusted_rand_score(truth, orc.labels) > 0.99
    bg = bayesian_gmm(x, truncation=10, seed=seed)
    assert bg.k_hat == 4 and bg.info["converged"] and adjusted_rand_score(truth, bg.labels) > 0.99
    assert bg.probabilities.shape == (len(x), 10) and np.allclose(bg.probabilities.sum(1), 1.0)


def test_nmf_recovers_parts_of_nonnegative_activations():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 100)
    parts = np.zeros((3, 9))
    for k in range(3):
        parts[k, 3 * k : 3 * k + 3] = 1.0  # each region drives its own channels
    acts = parts[truth] * rng.uniform(0.5, 2.0, (300, 1)) + rng.uniform(0, 0.05, (300, 9))
    res = nmf_factorization(acts, 3, oracle=True)
    assert res.oracle and res.method == "dff_nmf_oracle" and adjusted_rand_score(truth, res.labels) > 0.99
    assert nmf_factorization(acts).k_hat == 5  # DFF's default number of factors
    with pytest.raises(ValueError, match="non-negative"):
        nmf_factorization(acts - 1.0)


def regions_layer(seed: int = 0):
    """A 4-image layer whose 8x8 positions carry non-negative features drawn from their region."""
    rng = np.random.default_rng(seed)
    g = LayerGeometry((8, 8), (16, 16), (2.0, 2.0), (0.5, 0.5), (4, 4))
    masks = torch.zeros(4, 16, 16, dtype=torch.long)
    masks[:, :, 8:] = 1
    masks[:, 8:, :8] = 2
    masks[1:, :, :4] = -1  # partly unlabelled
    ii, yy, xx = torch.meshgrid(torch.arange(4), torch.arange(8), torch.arange(8), indexing="ij")
    index = torch.stack([ii.flatten(), yy.flatten(), xx.flatten()], 1)
    region = torch.where(xx.flatten() >= 4, 1, torch.where(yy.flatten() >= 4, 2, 0)).numpy()
    centres = np.array([[4.0, 0.5, 0.5], [0.5, 4.0, 0.5], [0.5, 0.5, 4.0]])
    points = np.abs(centres[region] + rng.normal(0, 0.3, (len(region), 3)))
    return LayerActivations("l1", torch.tensor(points, dtype=torch.float32), index, g, 4), masks


def test_compare_methods_scores_every_method():
    acts, masks = regions_layer()
    fit = DPGMM(truncation=8, seed=0).fit(acts.points)
    rows = compare_methods(acts, masks, {"l1": fit}, k_max=6, num_draws=4, truncation=8)
    methods = [r["method"] for r in rows]
    assert methods == ["dpgmm", "kmeans_silhouette", "kmeans_oracle", "dff_nmf", "dff_nmf_oracle", "bgmm_dp"]
    by = {r["method"]: r for r in rows}
    assert by["kmeans_oracle"]["oracle"] and by["dff_nmf_oracle"]["oracle"] and not by["dpgmm"]["oracle"]
    assert by["dpgmm"]["k_true"] == 3 and by["dpgmm"]["k_hat"] == fit.n_active_
    for m in ("dpgmm", "kmeans_silhouette", "kmeans_oracle", "bgmm_dp"):
        assert by[m]["ari"] > 0.9, m
    assert np.isnan(by["kmeans_oracle"]["ece"]) and np.isfinite(by["bgmm_dp"]["ece"])
    table = evaluation_table(rows)
    assert table.loc[("l1", "kmeans_oracle"), "k_hat"] == 3
    pos = compare_methods(acts, masks, methods=("kmeans_oracle",), resolution="positions")
    assert pos[0]["resolution"] == "positions"


def test_compare_methods_bad_inputs():
    acts, masks = regions_layer()
    with pytest.raises(ValueError, match="needs the layer's fit"):
        compare_methods(acts, masks, methods=("dpgmm",))
    with pytest.raises(ValueError, match="unknown methods"):
        compare_methods(acts, masks, methods=("spectral",))
    with pytest.raises(ValueError, match="masks have shape"):
        compare_methods(acts, masks[:2], methods=("kmeans_oracle",))
    with pytest.raises(ValueError, match="k_max"):
        kmeans_silhouette(np.zeros((5, 2)), k_max=5)
