"""Gaussian densities of low-rank-plus-diagonal draws by the Woodbury identity (no ``D x D`` matrix).

A draw of a ``covariance="lowrank"`` component (:mod:`dpmodels.models.lowrank`) is a mean ``mu``,
noise precisions ``lambda (D,)`` and loadings ``W (D, r)``: ``Sigma = W W^T + diag(1 / lambda)``.
With ``Lambda = diag(lambda)`` and ``L L^T = I_r + W^T Lambda W`` (Cholesky),

    Sigma^-1       = Lambda - Lambda W (L L^T)^-1 W^T Lambda = Lambda - A^T A,  A = L^-1 W^T Lambda  (r, D)
    log|Sigma^-1|  = sum_d log lambda_d - 2 sum_i log L_ii

so ``(x - mu)^T Sigma^-1 (x - mu) = sum_d lambda_d (x_d - mu_d)^2 - |A x - A mu|^2``: the diagonal
quadratic form minus ``r`` squares. The maps (:mod:`dpmodels.maps.uncertainty`), the concepts'
per-draw responsibilities and the InferenceData log-likelihood all go through these two functions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["woodbury_factors", "lowrank_log_density"]

LOG_2PI = math.log(2.0 * math.pi)


def woodbury_factors(noise_precisions: Tensor, loadings: Tensor) -> tuple[Tensor, Tensor]:
    """``A = L^-1 W^T Lambda`` ``(..., r, D)`` and ``log|Sigma^-1|`` ``(...)`` for noise precisions
    ``(..., D)`` and loadings ``(..., D, r)`` (any leading shape, e.g. ``(S, K)``)."""
    r = loadings.shape[-1]
    lam_w = noise_precisions.unsqueeze(-1) * loadings  # Lambda W  (..., D, r)
    eye = torch.eye(r, dtype=loadings.dtype, device=loadings.device)
    chol = torch.linalg.cholesky(eye + loadings.transpose(-1, -2) @ lam_w)  # L  (..., r, r)
    a = torch.linalg.solve_triangular(chol, lam_w.transpose(-1, -2), upper=False)  # (..., r, D)
    log_det = torch.log(noise_precisions).sum(-1) - 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)
    return a, log_det


def lowrank_log_density(x: Tensor, means: Tensor, noise_precisions: Tensor, loadings: Tensor) -> Tensor:
    """``log N(x_n | mu_k, W_k W_k^T + diag(1 / lambda_k))`` ``(M, N, K)`` in nats for ``x (N, D)``
    (or one data set per draw, ``(M, N, D)``), ``means (M, K, D)``, ``noise_precisions (M, K, D)``
    and ``loadings (M, K, D, r)``. Matrix products only: temporaries are ``(M, N, K, r)``, never
    ``(M, N, K, D)``, so wide layers (the reason for low rank) cost no more memory than narrow ones."""
    D = x.shape[-1]
    M, K, r = loadings.shape[0], loadings.shape[1], loadings.shape[-1]
    a, log_det = woodbury_factors(noise_precisions, loadings)  # (M, K, r, D), (M, K)
    lam_mu = noise_precisions * means  # (M, K, D)
    if x.dim() == 2:  # shared points: one product each with every draw's coefficients
        N = x.shape[0]
        sq = (x * x) @ noise_precisions.reshape(M * K, D).T  # (N, M K)
        lin = x @ lam_mu.reshape(M * K, D).T  # (N, M K)
        ax = (x @ a.permute(3, 0, 1, 2).reshape(D, M * K * r)).view(N, M, K, r)  # A x
        sq, lin, ax = sq.view(N, M, K).transpose(0, 1), lin.view(N, M, K).transpose(0, 1), ax.transpose(0, 1)
    else:  # one data set per draw  (M, N, D)
        sq = torch.einsum("mnd,mkd->mnk", x * x, noise_precisions)
        lin = torch.einsum("mnd,mkd->mnk", x, lam_mu)
        ax = torch.einsum("mnd,mkrd->mnkr", x, a)
    # sum_d lambda_d (x_d - mu_d)^2 = lambda . x^2 - 2 (lambda mu) . x + lambda . mu^2  (M, N, K)
    maha = sq - 2.0 * lin + (lam_mu * means).sum(-1)[:, None]
    a_mu = (a @ means.unsqueeze(-1)).squeeze(-1)  # A mu  (M, K, r)
    maha = maha - (ax - a_mu[:, None]).pow(2).sum(-1)
    return 0.5 * log_det[:, None] - 0.5 * D * LOG_2PI - 0.5 * maha
