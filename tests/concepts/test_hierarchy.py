"""The component hierarchy: planted concepts recovered across seeds, merges are sums of
responsibilities, the tree is a valid monotone scipy linkage, bad input is refused."""

import numpy as np
import pytest
from scipy.cluster.hierarchy import dendrogram, is_monotonic, is_valid_linkage
from sklearn.metrics import normalized_mutual_info_score

from dpmodels import DPGMM
from dpmodels.concepts import (
    CRITERIA,
    build_hierarchy,
    elbow,
    entropy_curve,
    entropy_decrease,
    select_concepts,
)

from .conftest import nested_mixture


def _random_resp(seed, n=400, k=7):
    rng = np.random.default_rng(seed)
    r = rng.dirichlet(np.full(k, 0.3), size=n)
    means = rng.normal(size=(k, 3))
    covs = np.stack([np.eye(3) * rng.uniform(0.5, 2) for _ in range(k)])
    return r, means, covs


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("seed", range(3))
def test_concept_responsibilities_are_exact_sums_and_the_tree_is_monotone(criterion, seed):
    r, means, covs = _random_resp(seed)
    h = build_hierarchy(r, criterion=criterion, means=means, covariances=covs)
    Z = h.linkage
    assert is_valid_linkage(Z) and is_monotonic(Z)
    assert dendrogram(Z, no_plot=True)["leaves"]  # scipy draws it
    for k in range(1, r.shape[1] + 1):
        a = h.assignment(k)
        assert sorted(set(a.tolist())) == list(range(k))
        merged = h.merge(r, k)
        expect = np.stack([r[:, a == c].sum(1) for c in range(k)], 1)
        np.testing.assert_array_equal(merged, expect)
        weights = np.array([h.weights[a == c].sum() for c in range(k)])
        assert np.all(np.diff(weights) <= 1e-12)  # concepts numbered by weight, largest first
    # levels are nested: each concept at k + 1 lies inside one concept at k
    for k in range(1, r.shape[1]):
        fine, coarse = h.assignment(k + 1), h.assignment(k)
        assert all(len(set(coarse[fine == c])) == 1 for c in range(k + 1))
    # the recorded entropy curve is the entropy of the merged responsibilities, and never rises
    np.testing.assert_allclose(h.entropy_curve, entropy_curve(h, r), atol=1e-10)
    assert np.all(np.diff(h.entropy_curve) >= -1e-12)


def test_entropy_criterion_merges_the_pair_with_the_largest_entropy_decrease():
    r, _, _ = _random_resp(5)
    h = build_hierarchy(r, criterion="entropy")
    K = r.shape[1]
    dec = {(a, b): entropy_decrease(r[:, a], r[:, b]) for a in range(K) for b in range(a + 1, K)}
    assert tuple(h.linkage[0, :2].astype(int)) == max(dec, key=dec.get)
    np.testing.assert_allclose(h.entropy_curve[-2], h.entropy_curve[-1] - max(dec.values()) / len(r))


def test_elbow_finds_the_changepoint_and_keeps_every_component_of_a_flat_curve():
    curve = np.r_[np.zeros(4), 0.05 * np.arange(1, 7)]  # flat up to k = 4, then rising
    assert elbow(curve) == 4
    assert elbow(np.zeros(8)) == 8
    assert elbow([0.3]) == 1 and elbow([0.0, 0.2]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("criterion", CRITERIA)
def test_planted_concepts_are_recovered_in_most_seeds(criterion):
    hits, nmis = 0, []
    for seed in range(5):
        x, y = nested_mixture(seed)
        fit = DPGMM(truncation=20, seed=seed).fit(x)
        sel = select_concepts(fit.posterior_, x, criterion=criterion, num_draws=8, seed=seed)
        assert sel.hierarchy.num_components > 3  # the mixture needs more components than concepts
        lo, hi = sel.k_interval
        assert lo <= hi and 1 <= lo and hi <= sel.hierarchy.num_components
        hits += sel.k == 3
        r = fit.posterior_.responsibilities(x.astype(np.float32))[0][:, sel.hierarchy.components]
        nmis.append(normalized_mutual_info_score(y, sel.hierarchy.merge(r.double().numpy(), 3).argmax(1)))
    assert hits >= 3, f"{hits}/5 seeds found 3 concepts"
    assert np.median(nmis) > 0.95


def test_bad_input_names_the_setting():
    r, means, covs = _random_resp(0, k=4)
    h = build_hierarchy(r)
    with pytest.raises(ValueError, match="num_concepts"):
        h.assignment(5)
    with pytest.raises(ValueError, match="num_concepts"):
        h.membership(0)
    with pytest.raises(ValueError, match="criterion"):
        build_hierarchy(r, criterion="ward")
    with pytest.raises(ValueError, match="means and covariances"):
        build_hierarchy(r, criterion="bhattacharyya")
    with pytest.raises(ValueError, match="non-negative"):
        build_hierarchy(-r)
    x, _ = nested_mixture(0, per=200)
    fit = DPGMM(truncation=10, seed=0).fit(x)
    with pytest.raises(ValueError, match="num_concepts"):
        select_concepts(fit.posterior_, x, num_concepts=int(fit.n_active_) + 1, num_draws=2)


def test_level_and_criteria_settings_are_checked():
    from dpmodels.concepts import at_level
    from dpmodels.concepts.layer import layer_concepts

    sentinel = object()
    assert at_level(sentinel, None, "components") is sentinel
    with pytest.raises(ValueError, match="level"):
        at_level(sentinel, None, "regions")
    with pytest.raises(ValueError, match="concept maps"):
        at_level(sentinel, None, "concepts")
    with pytest.raises(ValueError, match="criteria"):
        layer_concepts(None, None, None, None, criteria=("ward",))


def test_bhattacharyya_overlap_matches_the_pairwise_formula_in_any_block_size():
    import torch

    from dpmodels.concepts import bhattacharyya_overlap

    g = torch.Generator().manual_seed(3)
    K, D = 7, 6
    mu = torch.randn(K, D, generator=g, dtype=torch.float64)
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64)
    cov = A @ A.transpose(-1, -2) / D + 0.3 * torch.eye(D, dtype=torch.float64)
    want = np.ones((K, K))
    for i in range(K):
        for j in range(K):
            if i != j:
                avg = 0.5 * (cov[i] + cov[j])
                diff = mu[i] - mu[j]
                d_b = diff @ torch.linalg.solve(avg, diff) / 8 + 0.5 * (
                    torch.logdet(avg) - 0.5 * (torch.logdet(cov[i]) + torch.logdet(cov[j]))
                )
                want[i, j] = float(torch.exp(-d_b))
    for block in (D * D, 5 * D * D, 2**22):  # one pair per block, a few, all at once
        np.testing.assert_allclose(bhattacharyya_overlap(mu, cov, block_elements=block), want, rtol=1e-10)
