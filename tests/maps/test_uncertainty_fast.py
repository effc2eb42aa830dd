"""The feature-product evaluation of the per-draw responsibilities against a direct computation, and
the negligible-component pruning with its per-point exactness check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpmodels import DPGMM
from dpmodels.maps import uncertainty
from dpmodels.maps.uncertainty import point_uncertainty


def _direct(post, x: torch.Tensor, num_draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, aleatoric) entropies from draws, one component at a time, |L^T (x - mu)|^2 form."""
    with torch.random.fork_rng(devices=[]):
        d = post.sample(num_draws, seed=seed, dtype=torch.float64)
    d = {k: v.double() for k, v in d.items()}  # diagonal draws come back in the parameters' dtype
    x = x.double()
    S, K = d["log_weights"].shape[0], d["log_weights"].shape[-1]
    probs = []
    for s in range(S):
        cols = []
        for k in range(K):
            mu = d["means"][s, 0, k]
            if post.covariance_type == "full":
                tril = d["precision_trils"][s, 0, k]
                maha = ((x - mu) @ tril).pow(2).sum(-1)
                log_det = 2 * torch.log(torch.diagonal(tril)).sum()
            else:
                prec = d["precisions"][s, 0, k]
                maha = ((x - mu).pow(2) * prec).sum(-1)
                log_det = torch.log(prec).sum()
            D = x.shape[1]
            cols.append(
                d["log_weights"][s, 0, k] + 0.5 * log_det - 0.5 * D * math.log(2 * math.pi) - 0.5 * maha
            )
        probs.append(torch.softmax(torch.stack(cols, 1), 1))  # (n, K)
    p = torch.stack(probs, 1)  # (n, S, K)

    def ent(q):
        return -(q * torch.log(q.clamp_min(1e-300))).sum(-1)

    return ent(p.mean(1)), ent(p).mean(1)


@pytest.fixture(scope="module", params=["full", "diag"])
def fitted(request):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (4, 3))
    X = (centres[rng.integers(0, 4, 600)] + rng.normal(0, 1, (600, 3))).astype(np.float32)
    model = DPGMM(truncation=12, covariance=request.param, max_iter=80, seed=0, progress=False).fit(X)
    return model.posterior_, torch.from_numpy(X)


def test_matches_direct_per_component_computation(fitted):
    post, X = fitted
    out = point_uncertainty(post, X, num_draws=6, seed=4, chunk_size=97)
    total, aleatoric = _direct(post, X, 6, 4)
    torch.testing.assert_close(out["aleatoric"], aleatoric, atol=1e-10, rtol=0)
    torch.testing.assert_close(out["epistemic"], (total - aleatoric).clamp_min(0), atol=1e-10, rtol=0)


def test_chunking_does_not_change_results(fitted):
    post, X = fitted
    a = point_uncertainty(post, X, num_draws=5, seed=1, chunk_size=64)
    b = point_uncertainty(post, X, num_draws=5, seed=1, chunk_size=1000)
    # responsibilities are computed in float32: BLAS may pick another kernel for another block size,
    # so chunking changes results by float32 round-off, never more
    assert (a["labels"] != b["labels"]).float().mean() < 0.01
    for k in ("entropy", "epistemic", "aleatoric"):
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_pruning_is_exact_with_fallback(fitted, monkeypatch):
    """With an absurd 'negligible' threshold, real components are pruned; the per-point bound must
    send every point where that matters back to the exact computation."""
    post, X = fitted
    exact = point_uncertainty(post, X, num_draws=5, seed=2)
    monkeypatch.setattr(uncertainty, "NEGLIGIBLE_WEIGHT", 0.05)
    pruned_terms = uncertainty._draw_terms(post, 5, 2)
    assert 0 < int(pruned_terms["keep"].sum()) < post.truncation  # something is actually pruned
    pruned = point_uncertainty(post, X, num_draws=5, seed=2)
    for k in ("epistemic", "aleatoric"):
        torch.testing.assert_close(pruned[k], exact[k], atol=1e-15, rtol=0)


def test_pruned_tail_without_fallback_changes_nothing_measurable(fitted, monkeypatch):
    post, X = fitted
    exact = point_uncertainty(post, X, num_draws=4, seed=3)
    monkeypatch.setattr(uncertainty, "NEGLIGIBLE_WEIGHT", 1e-6)
    pruned = point_uncertainty(post, X, num_draws=4, seed=3)
    torch.testing.assert_close(pruned["aleatoric"], exact["aleatoric"], atol=1e-15, rtol=0)
