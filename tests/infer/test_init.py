"""k-means initialisation: distances, the wide-data subset, and the first statistics."""

import pytest
import torch

from dpmodels.infer import init


def _blocks(n_per: int, centres: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points in contiguous blocks, one per centre (data order = cluster order): ``(1, n, D)``, labels."""
    g = torch.Generator().manual_seed(seed)
    C, D = centres.shape
    labels = torch.arange(C).repeat_interleave(n_per)
    x = centres[labels] + 0.1 * torch.randn(C * n_per, D, generator=g)
    return x.unsqueeze(0), labels


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether label vectors ``a`` and ``b`` (n,) define the same partition (up to renaming)."""
    pairs = torch.unique(torch.stack([a, b]), dim=1)
    return pairs.shape[1] == len(torch.unique(a)) == len(torch.unique(b))


def test_sq_dist_matches_pairwise_differences():
    g = torch.Generator().manual_seed(1)
    x, c = (
        torch.randn(2, 40, 7, generator=g, dtype=torch.float64),
        torch.randn(2, 5, 7, generator=g, dtype=torch.float64),
    )
    want = (x.unsqueeze(2) - c.unsqueeze(1)).pow(2).sum(-1)  # (B, n, C)
    torch.testing.assert_close(init._sq_dist(x, c), want)
    torch.testing.assert_close(init._sq_dist(x, c, x.pow(2).sum(-1, keepdim=True)), want)


def test_narrow_data_run_kmeans_on_every_point():
    """Where n * D is within the budget, the labels are exactly k-means++ then Lloyd on all points."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 300, 4, generator=g)
    got = init.kmeans_labels(x, 6, torch.Generator().manual_seed(5), n_iter=10)
    _, want = init.lloyd(x, init.kmeans_plusplus(x, 6, torch.Generator().manual_seed(5)), 10)
    assert torch.equal(got, want)


def test_wide_data_label_every_point_from_a_random_subset(monkeypatch):
    """Over the budget, k-means runs on a random subset, yet every point gets its cluster: clusters
    that sit only in the last rows (data order) are found, and the labels cover all n points."""
    monkeypatch.setattr(init, "KMEANS_ELEMENTS", 2**12)  # 64 points at D = 64: the floor decides
    monkeypatch.setattr(init, "KMEANS_POINTS_PER_CENTRE", 20)  # 5 centres -> k-means on 100 of 1000
    centres = 10.0 * torch.eye(5, 64)
    x, truth = _blocks(200, centres)
    calls = []
    real = init.kmeans_plusplus
    monkeypatch.setattr(init, "kmeans_plusplus", lambda p, *a: calls.append(p.shape) or real(p, *a))
    labels = init.kmeans_labels(x, 5, torch.Generator().manual_seed(0))
    assert calls == [torch.Size([1, 100, 64])]
    assert labels.shape == (1, 1000)
    assert _same_partition(labels[0], truth)


def test_wide_initial_stats_use_all_points(monkeypatch):
    monkeypatch.setattr(init, "KMEANS_ELEMENTS", 2**12)
    monkeypatch.setattr(init, "KMEANS_POINTS_PER_CENTRE", 20)
    centres = 10.0 * torch.eye(4, 64, dtype=torch.float64)
    x, truth = _blocks(150, centres)
    stats = init.initial_stats(x, 8, 6000, torch.Generator().manual_seed(0), n_clusters=4, covariance="diag")
    counts = stats.count  # (1, 8)
    torch.testing.assert_close(counts.sum(-1), torch.full((1,), 6000.0, dtype=torch.float64))
    assert sorted(counts[0, :4].tolist()) == [1500.0] * 4  # four clusters of 150 points, scaled by 10
    assert counts[0, 4:].abs().max() == 0


def test_check_finite_reads_past_overflowing_sums_and_finds_every_bad_value():
    """The finite check's one-reduction pass per chunk (the pass before any seeding) must neither
    refuse finite values whose sum overflows nor miss NaN or Inf, +Inf and -Inf together included."""
    from dpmodels.data.source import PointSource

    big = torch.full((6, 3), 3e38)  # finite float32 values; their sum overflows to inf
    PointSource(big).check_finite(chunk_size=4)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = big.clone()
        x[5, 1] = bad
        with pytest.raises(ValueError, match=r"first rows: \[5\]"):
            PointSource(x).check_finite(chunk_size=4)
    x = torch.zeros(6, 3)
    x[1, 0], x[1, 2] = float("inf"), -float("inf")  # the sum is NaN, not inf
    with pytest.raises(ValueError, match=r"first rows: \[1\]"):
        PointSource(x).check_finite(chunk_size=4)
