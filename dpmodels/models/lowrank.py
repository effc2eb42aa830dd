"""Low-rank-plus-diagonal components: a Dirichlet-process mixture of factor analysers.

``covariance="lowrank"`` with rank ``r`` gives every component ``k`` the generative story

    lambda_kd            ~ Gamma(nu0 / 2, Psi0_d / 2)                 noise precision of feature d
    w_kd | lambda_kd     ~ N(0, (lambda_kd A0)^-1),   w_kd = (W_kd1, ..., W_kdr, mu_kd)
    y_n                  ~ N(0, I_r)                                   the point's factors
    x_nd | z_n = k, y_n  ~ N(W_kd . y_n + mu_kd, 1 / lambda_kd)

with ``A0 = diag(loading_precision, ..., loading_precision, mean_precision)``. Integrating ``y_n``
out, ``x_n | z_n = k ~ N(mu_k, W_k W_k^T + diag(1 / lambda_k))``: a factor analyser, ``D (r + 2)``
numbers per component instead of ``D (D + 3) / 2``. Rank 0 is exactly the diagonal Normal-Gamma
component of :mod:`dpmodels.models.base_measure`.

Variational family (in the style of Ghahramani & Beal 2000, "Variational inference for Bayesian
mixtures of factor analysers", with a conjugate prior instead of their point-estimated noise and
ARD loadings so that every update is closed form and the ELBO exact from statistics):

* ``q(w_kd, lambda_kd)`` Normal-Gamma: ``lambda_kd ~ Gamma(dof_k / 2, scale_kd / 2)``,
  ``w_kd | lambda_kd ~ N(m_kd, (lambda_kd A_k)^-1)``, one ``(r+1) x (r+1)`` row precision ``A_k``
  per component shared by its features (the complete conditional is a Bayesian linear regression
  per feature on the same regressors ``(y_n, 1)``);
* ``q(y_n | z_n = k) = N(P_k^-1 h_nk, P_k^-1)``, the optimum given the globals, with
  ``P_k = I + E[W_k^T Lambda_k W_k]`` and ``h_nk = E[W_k^T Lambda_k] x_n - E[W_k^T Lambda_k mu_k]``;
* ``q(z_n)`` from ``log rho_nk = E[log pi_k] + log integral exp E[log p(x_n, y | z_n = k)] dy``.

Sufficient statistics of component ``k`` (what an M-step needs, additive over points, so merges and
data-parallel sums work as for the other covariance types): ``N_k``, ``S_xy = sum_n r_nk x_n
E[y~_nk]^T (D, r+1)`` with ``y~ = (y, 1)``, ``S_xx = sum_n r_nk x_n^2 (D)`` and ``S_yy = sum_n r_nk
E[y~ y~^T] (r+1, r+1)``. They travel in :class:`~dpmodels.infer.updates.Stats` as ``s1 = S_xy`` and
``s2 = [S_xx, vec(S_yy)]`` ``(D + (r+1)^2)``; the factors' entropy ``sum_nk r_nk H[q(y_n | k)]`` is
added to the assignment entropy.

Memory: an E-step over a chunk of ``n`` points holds ``(B, n, K, r)`` values (the factors' means);
the per-component state is ``(B, K, D, r)`` plus ``(B, K, r+1, r+1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..priors import gamma_kl
from .quadratic import _distinct_components

__all__ = [
    "LowRankPlan",
    "lowrank_plan",
    "pack_stats",
    "unpack_stats",
    "prior_row_precision",
    "lowrank_component_update",
    "lowrank_elbo_terms",
    "lowrank_kl_terms",
    "lowrank_log_predictive",
    "lowrank_covariances",
    "lowrank_expected_log_det_precision",
]

LOG_2PI = math.log(2 * math.pi)


def _rank(params) -> int:
    return params.loadings.shape[-1]


def _chol_logdet(tril: Tensor) -> Tensor:
    return 2.0 * torch.log(tril.diagonal(dim1=-2, dim2=-1)).sum(-1)


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.transpose(-1, -2))


def _row_means(params) -> Tensor:
    """``m_kd = E[w_kd]`` ``(B, K, D, r+1)``: the loadings with the mean as last column."""
    return torch.cat([params.loadings, params.mean.unsqueeze(-1)], -1)


def lowrank_expected_log_det_precision(params) -> Tensor:
    """``E_q[log |Lambda_k|] = sum_d E[log lambda_kd]`` ``(B, K)`` (as for diagonal components)."""
    return (torch.digamma(0.5 * params.dof).unsqueeze(-1) - torch.log(0.5 * params.scale)).sum(-1)


@dataclass
class LowRankPlan:
    """Per-component factors of an E-step, built once per pass (:func:`lowrank_plan`).

    Per component ``(B, K, ...)``: ``m_y1 (B, K, r)`` = the factor/mean block of
    ``E[w~^T Lambda w~]``; ``p_inv (B, K, r, r)`` = ``P_k^-1``, the factors' posterior covariance;
    ``const (B, K)``: every term of ``log rho_nk`` that does not depend on the point;
    ``log_det_p (B, K)``. Components with exactly equal parameters within a fit (every empty one sits
    at the prior) are evaluated once: ``unique (U,)`` and ``index (B, K)`` as in
    :mod:`dpmodels.models.quadratic`, and the operands of the point-sized products are kept for the
    distinct components only: ``lam (B, U, D)`` = ``E[lambda]``, ``lam_w (B, U, D, r)`` =
    ``E[lambda] E[W]``, ``lam_mu (B, U, D)``."""

    lam: Tensor
    lam_w: Tensor
    lam_mu: Tensor
    m_y1: Tensor
    p_inv: Tensor
    const: Tensor
    log_det_p: Tensor
    unique: Tensor
    index: Tensor
    form: str = "lowrank"

    @property
    def rank(self) -> int:
        return self.lam_w.shape[-1]

    def distinct(self, t: Tensor) -> Tensor:
        """A per-component tensor ``(B, K, ...)`` at the distinct components ``(B, U, ...)``."""
        return t[:, self.unique]

    def expand(self, t: Tensor, dim: int) -> Tensor:
        """A tensor over the distinct components (axis ``dim``, ``U``) over all ``K`` of every fit."""
        B, K = self.index.shape
        shape, sizes = [1] * t.dim(), list(t.shape)
        shape[0], shape[dim] = B, K
        sizes[dim] = K
        return torch.gather(t, dim, self.index.reshape(shape).expand(sizes))

    def factors_distinct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`factors` for the distinct components only: ``(B, n, U)`` and ``(B, U, r, n)``."""
        B, n, D = x.shape
        U, r = self.lam.shape[1], self.rank
        quad = (x * x) @ self.lam.transpose(1, 2)  # (B, n, U)
        lin = x @ self.lam_mu.transpose(1, 2)  # (B, n, U)
        h = (x @ self.lam_w.permute(0, 2, 1, 3).reshape(B, D, U * r)).reshape(B, n, U, r)
        h = h.permute(0, 2, 3, 1) - self.distinct(self.m_y1).unsqueeze(-1)  # (B, U, r, n)
        ey = self.distinct(self.p_inv) @ h  # P^-1 h; r is small: a product, not r x r solves per point
        const = self.distinct(self.const).unsqueeze(1)
        return const - 0.5 * quad + lin + 0.5 * (h * ey).sum(2).transpose(1, 2), ey

    def factors(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``E[log p(x_n | z_n = k)]`` integrated over the factors, ``(B, n, K)``, and the factors'
        means ``E[y_n | z_n = k]`` ``(B, K, r, n)`` for ``x (B, n, D)`` (centred like the plan)."""
        loglik, ey = self.factors_distinct(x)
        return self.expand(loglik, 2), self.expand(ey, 1)

    def expected_log_likelihood(self, x: Tensor) -> Tensor:
        return self.expand(self.factors_distinct(x)[0], 2)


def lowrank_plan(params, dtype: torch.dtype | None = None) -> LowRankPlan:
    """The :class:`LowRankPlan` of ``params`` (computed in float64, returned in ``dtype``, default
    the parameters' dtype)."""
    dtype = dtype or params.mean.dtype
    p = params.map(lambda t: t.double())
    r, D = _rank(p), p.num_features
    lam = p.dof.unsqueeze(-1) / p.scale  # (B, K, D)
    m = _row_means(p)  # (B, K, D, q)
    a_inv = torch.cholesky_inverse(torch.linalg.cholesky(_sym(p.factor_precision)))  # (B, K, q, q)
    big_m = _sym((m * lam.unsqueeze(-1)).transpose(-1, -2) @ m + D * a_inv)  # E[w~^T Lambda w~]
    eye = torch.eye(r, dtype=torch.float64, device=lam.device)
    chol_p = torch.linalg.cholesky(eye + big_m[..., :r, :r])
    log_det_p = _chol_logdet(chol_p)
    const = (
        0.5 * lowrank_expected_log_det_precision(p)
        - 0.5 * D * LOG_2PI
        - 0.5 * big_m[..., r, r]
        - 0.5 * log_det_p
    )
    unique, index = _distinct_components([p.mean, p.dof, p.scale, p.loadings, p.factor_precision])
    unique, index = unique.to(lam.device), index.to(lam.device)
    per = {
        "lam": lam[:, unique],
        "lam_w": (lam.unsqueeze(-1) * p.loadings)[:, unique],
        "lam_mu": (lam * p.mean)[:, unique],
        "m_y1": big_m[..., :r, r],
        "p_inv": _sym(torch.cholesky_inverse(chol_p)),
        "const": const,
        "log_det_p": log_det_p,
    }
    return LowRankPlan(**{k: v.to(dtype) for k, v in per.items()}, unique=unique, index=index)


def pack_stats(sxy: Tensor, sxx: Tensor, syy: Tensor) -> tuple[Tensor, Tensor]:
    """``(s1, s2)`` of :class:`~dpmodels.infer.updates.Stats` from ``S_xy (B, K, D, q)``,
    ``S_xx (B, K, D)`` and ``S_yy (B, K, q, q)``."""
    return sxy, torch.cat([sxx, syy.flatten(-2)], -1)


def unpack_stats(s1: Tensor, s2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(S_xy, S_xx, S_yy)`` from the packed ``s1 (B, K, D, q)``, ``s2 (B, K, D + q^2)``."""
    D, q = s1.shape[-2], s1.shape[-1]
    return s1, s2[..., :D], s2[..., D:].reshape(s2.shape[:-1] + (q, q))


def prior_row_precision(base, rank: int | None = None) -> Tensor:
    """``A0`` ``(B, q, q)``: ``loading_precision`` on the ``r`` loadings, ``mean_precision`` on the mean."""
    r = base.rank if rank is None else rank
    B = base.mean.shape[0]
    diag = torch.full(
        (B, r + 1), float(base.loading_precision), dtype=base.mean.dtype, device=base.mean.device
    )
    diag[:, r] = base.mean_precision
    return torch.diag_embed(diag)


def factor_statistics(plan: LowRankPlan, x: Tensor, r_nk: Tensor, ey: Tensor, e_log_pi: Tensor | None = None):
    """``(count, S_xy, S_xx, S_yy, factor entropy)`` of a centred chunk ``x (B, n, D)`` under
    responsibilities ``r_nk (B, n, K)``, in float64.

    ``ey``: the factor means, ``(B, K, r, n)``, or ``(B, U, r, n)`` for the plan's distinct
    components together with ``e_log_pi (B, K)``. Components that share parameters share their
    factors and their log-likelihood, so their responsibilities are proportional to
    ``exp(E[log pi_k])`` at every point: their statistics are computed once, from the summed
    responsibilities, and shared in those proportions (``n U D r`` operations instead of
    ``n K D r``)."""
    B, n, D = x.shape
    K, r = r_nk.shape[-1], plan.rank
    grouped = ey.shape[1] != K or e_log_pi is not None
    if grouped:
        U = ey.shape[1]
        r_nk = torch.zeros(B, n, U, dtype=r_nk.dtype, device=r_nk.device).scatter_add_(
            2, plan.index.unsqueeze(1).expand(B, n, K), r_nk
        )  # (B, n, U): summed over the components of each group
    rT = r_nk.transpose(1, 2)  # (B, G, n)
    G = rT.shape[1]
    rey = ey * rT.unsqueeze(2)  # (B, G, r, n)
    count = rT.sum(-1).double()
    s_x = (rT @ x).double()  # (B, G, D)
    s_xx = (rT @ (x * x)).double()
    s_xy = (rey.reshape(B, G * r, n) @ x).reshape(B, G, r, D).transpose(-1, -2).double()  # (B, G, D, r)
    s_y = rey.sum(-1).double()  # (B, G, r)
    p_inv = plan.distinct(plan.p_inv) if grouped else plan.p_inv
    s_yy = count[..., None, None] * p_inv.double() + (rey @ ey.transpose(-1, -2)).double()
    q = r + 1
    syy = torch.zeros(B, G, q, q, dtype=torch.float64, device=x.device)
    syy[..., :r, :r] = s_yy
    syy[..., :r, r] = s_y
    syy[..., r, :r] = s_y
    syy[..., r, r] = count
    sxy = torch.cat([s_xy, s_x.unsqueeze(-1)], -1)
    if grouped:  # share each group's statistics among its components
        w = torch.exp((e_log_pi - e_log_pi.amax(-1, keepdim=True)).double())  # (B, K)
        total = torch.zeros(B, G, dtype=torch.float64, device=x.device).scatter_add_(1, plan.index, w)
        share = w / torch.gather(total, 1, plan.index)  # (B, K)
        count, sxy, s_xx, syy = (
            plan.expand(t, 1) * share.reshape((B, K) + (1,) * (t.dim() - 2)) for t in (count, sxy, s_xx, syy)
        )
    h_y = 0.5 * r * (1.0 + LOG_2PI) - 0.5 * plan.log_det_p.double()  # entropy of q(y | k)  (B, K)
    return count, sxy, s_xx, syy, (count * h_y).sum(-1)


def lowrank_component_update(count: Tensor, s1: Tensor, s2: Tensor, base):
    """The component factors from centred statistics: ``dict`` of ``mean, mean_precision, dof,
    scale, loadings, factor_precision`` (float64). Any number ``K'`` of components."""
    n_k = count.clamp_min(0.0)
    sxy, sxx, syy = unpack_stats(s1, s2)
    r = sxy.shape[-1] - 1
    a = _sym(prior_row_precision(base, r).unsqueeze(1) + syy)  # (B, K', q, q)
    chol = torch.linalg.cholesky(a)
    m = torch.cholesky_solve(sxy.transpose(-1, -2), chol).transpose(-1, -2)  # A^-1 S_xy,d  (B, K', D, q)
    psi0 = base.scale.unsqueeze(1)
    psi = torch.maximum(psi0 + sxx - (m * sxy).sum(-1), 1e-3 * psi0)
    a_inv = torch.cholesky_inverse(chol)
    return {
        "mean": m[..., r],
        "mean_precision": 1.0 / a_inv[..., r, r],
        "dof": base.dof[:, None] + n_k,
        "scale": psi,
        "loadings": m[..., :r],
        "factor_precision": a,
    }


def lowrank_kl_terms(params, base) -> Tensor:
    """``KL(q(W_k, mu_k, lambda_k) || prior)`` per component ``(B, K)``; ``base`` centred."""
    r, D = _rank(params), params.num_features
    a0 = prior_row_precision(base, r).unsqueeze(1)  # (B, 1, q, q)
    a = _sym(params.factor_precision)
    chol = torch.linalg.cholesky(a)
    a_inv = torch.cholesky_inverse(chol)
    m = _row_means(params)  # (B, K, D, q)
    lam = params.dof.unsqueeze(-1) / params.scale
    shape, shape0 = 0.5 * params.dof.unsqueeze(-1), 0.5 * base.dof[:, None, None]
    kl_gamma = gamma_kl(
        shape.expand_as(params.scale), 0.5 * params.scale, shape0, 0.5 * base.scale.unsqueeze(1)
    )
    a0_diag = a0.diagonal(dim1=-2, dim2=-1)  # A0 is diagonal  (B, 1, q)
    maha = (lam * (m.pow(2) * a0_diag.unsqueeze(-2)).sum(-1)).sum(-1)  # sum_d lam_d m_d^T A0 m_d
    trace = (a0_diag * a_inv.diagonal(dim1=-2, dim2=-1)).sum(-1)  # tr(A0 A^-1)
    log_det = _chol_logdet(chol) - torch.log(a0_diag).sum(-1)
    kl_normal = 0.5 * (D * trace + maha - D * (r + 1) + D * log_det)
    return kl_gamma.sum(-1) + kl_normal


def lowrank_elbo_terms(count: Tensor, s1: Tensor, s2: Tensor, params, base) -> Tensor:
    """Each component's share of the ELBO ``(B, K')``: the expected log-likelihood of its points
    and factors under ``q(z, y)`` (from the statistics), minus the KL of its globals. The factors'
    entropy is part of the statistics' entropy. An empty component at the prior contributes zero."""
    sxy, sxx, syy = unpack_stats(s1, s2)
    r, D = sxy.shape[-1] - 1, sxx.shape[-1]
    m = _row_means(params)
    lam = params.dof.unsqueeze(-1) / params.scale
    a_inv = torch.cholesky_inverse(torch.linalg.cholesky(_sym(params.factor_precision)))
    quad = sxx - 2 * (m * sxy).sum(-1) + ((m @ syy) * m).sum(-1)  # (B, K, D)
    trace = (a_inv * syy).sum((-1, -2))  # tr(A^-1 S_yy)
    loglik = (
        count * (0.5 * lowrank_expected_log_det_precision(params) - 0.5 * D * LOG_2PI)
        - 0.5 * (lam * quad).sum(-1)
        - 0.5 * D * trace
    )
    y_prior = -0.5 * syy[..., :r, :r].diagonal(dim1=-2, dim2=-1).sum(-1) - 0.5 * r * LOG_2PI * count
    return loglik + y_prior - lowrank_kl_terms(params, base)


def lowrank_covariances(params) -> Tensor:
    """Plug-in covariances ``E[W] E[W]^T + diag(E[lambda]^-1)`` ``(B, K, D, D)``."""
    w = params.loadings
    return w @ w.transpose(-1, -2) + torch.diag_embed(params.scale / params.dof.unsqueeze(-1))


def lowrank_log_predictive(params, x: Tensor) -> Tensor:
    """Plug-in predictive log density of each component ``(B, n, K)``:
    ``N(x | E[mu], E[W] E[W]^T + diag(E[lambda]^-1))`` by the Woodbury identity (``n K D r``
    operations, no ``D x D`` matrix). Unlike the full and diagonal types this is not the exact
    posterior predictive (a factor analyser integrated over ``q`` has no closed form): parameter
    uncertainty is left out, which matters only for components with few points."""
    p = params.map(lambda t: t.double())
    x = x.double()
    B, n, D = x.shape
    K, r = p.truncation, _rank(p)
    inv_var = p.dof.unsqueeze(-1) / p.scale  # (B, K, D)
    iw = inv_var.unsqueeze(-1) * p.loadings  # Psi^-1 W  (B, K, D, r)
    eye = torch.eye(r, dtype=torch.float64, device=x.device)
    chol = torch.linalg.cholesky(eye + p.loadings.transpose(-1, -2) @ iw)  # (B, K, r, r)
    log_det = -torch.log(inv_var).sum(-1) + _chol_logdet(chol)
    quad = (x * x) @ inv_var.transpose(1, 2) - 2 * x @ (inv_var * p.mean).transpose(1, 2)
    quad = quad + (inv_var * p.mean.pow(2)).sum(-1).unsqueeze(1)  # (x - mu)^T Psi^-1 (x - mu)
    v = (x @ iw.permute(0, 2, 1, 3).reshape(B, D, K * r)).reshape(B, n, K, r).permute(0, 2, 3, 1)
    v = v - (iw * p.mean.unsqueeze(-1)).sum(-2).unsqueeze(-1)  # W^T Psi^-1 (x - mu)  (B, K, r, n)
    s = torch.linalg.solve_triangular(chol, v, upper=False)
    quad = quad - s.pow(2).sum(2).transpose(1, 2)
    return -0.5 * (D * LOG_2PI + log_det.unsqueeze(1) + quad)


def _principal_scores(xc: Tensor, rank: int) -> Tensor:
    """Unit-variance scores of centred points ``xc (n, D)`` on their ``min(rank, n)`` leading
    principal axes, from the eigenvectors of the smaller of the Gram ``(n, n)`` and scatter
    ``(D, D)`` matrices (deterministic; an SVD of a wide block is several times slower)."""
    n, D = xc.shape
    m = min(rank, n)
    if n <= D:
        _, u = torch.linalg.eigh(xc @ xc.T)  # ascending
        return u[:, -m:].flip(-1) * math.sqrt(n)
    vals, v = torch.linalg.eigh(xc.T @ xc)
    v, vals = v[:, -m:].flip(-1), vals[-m:].flip(-1)
    return (xc @ v) / torch.sqrt(vals.clamp_min(1e-300) / n)


def initial_lowrank_stats(x: Tensor, count: Tensor, s1: Tensor, rank: int, scale: float) -> tuple:
    """Statistics of a hard clustering of the centred subsample ``x (B, n, D)`` for low-rank
    components, ``(count, s1, s2, entropy)`` scaled by ``scale`` (points represented per subsample
    point). The clusters are those whose sums ``count (B, K)``, ``s1 (B, K, D)`` k-means gave; each
    point goes to the nearest cluster mean, and its factors are its scores on the cluster's ``rank``
    leading principal directions, scaled to unit variance (so the first M-step starts the loadings
    at the cluster's principal axes; zero factors would be a fixed point of the updates)."""
    B, n, D = x.shape
    K, q = count.shape[1], rank + 1
    means = s1 / count.clamp_min(1e-12).unsqueeze(-1)
    dist = torch.cdist(x, means).masked_fill(~(count > 0).unsqueeze(1), torch.inf)  # (B, n, K)
    labels = dist.argmin(-1)
    sxy = x.new_zeros(B, K, D, q)
    sxx = x.new_zeros(B, K, D)
    syy = x.new_zeros(B, K, q, q)
    counts = x.new_zeros(B, K)
    for b in range(B):
        for k in labels[b].unique().tolist():
            xk = x[b, labels[b] == k]  # (n_k, D)
            n_k = xk.shape[0]
            y = xk.new_zeros(n_k, rank)
            if n_k > 1:
                y[:, : min(rank, n_k)] = _principal_scores(xk - xk.mean(0), rank)
            yt = torch.cat([y, y.new_ones(n_k, 1)], -1)  # (n_k, q)
            counts[b, k] = n_k
            sxy[b, k] = xk.T @ yt
            sxx[b, k] = xk.pow(2).sum(0)
            syy[b, k] = yt.T @ yt
    s1_, s2_ = pack_stats(sxy, sxx, syy)
    return counts * scale, s1_ * scale, s2_ * scale, x.new_zeros(B)


def lowrank_draws(params, S: tuple) -> tuple[Tensor, Tensor, Tensor]:
    """Draws from ``q``: noise precisions ``(S, B, K, D)``, means ``(S, B, K, D)`` and loadings
    ``(S, B, K, D, r)``: ``lambda_kd ~ Gamma``, then ``w_kd | lambda_kd ~ N(m_kd, (lambda_kd A_k)^-1)``."""
    p = params
    shape = (0.5 * p.dof).unsqueeze(-1).expand_as(p.scale)
    prec = torch.distributions.Gamma(shape, 0.5 * p.scale).sample(S)  # (S, B, K, D)
    chol = torch.linalg.cholesky(_sym(p.factor_precision))  # A = L L^T  (B, K, q, q)
    eps = torch.randn(S + _row_means(p).shape, dtype=p.mean.dtype, device=p.mean.device).unsqueeze(-1)
    # w = m + L^-T eps / sqrt(lambda) has covariance (lambda A)^-1
    noise = torch.linalg.solve_triangular(chol.transpose(-1, -2).unsqueeze(-3), eps, upper=True).squeeze(-1)
    w = _row_means(p) + noise / prec.sqrt().unsqueeze(-1)
    return prec, w[..., -1], w[..., :-1]


def pair_factor_statistics(
    x: Tensor, r_nk: Tensor, ey: Tensor, pairs: Tensor, index: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """For each merge candidate ``(j, k)`` of ``pairs (B, P, 2)``: the factor statistics of ``k``'s
    points in ``j``'s factor coordinates, ``sum_n r_nk x_n E_j[y_n]^T`` ``(B, P, D, r)``,
    ``sum_n r_nk E_j[y_n]`` ``(B, P, r)`` and ``sum_n r_nk E_j[y_n] E_j[y_n]^T`` ``(B, P, r, r)``
    (float64), for a chunk ``x (B, n, D)`` with ``r_nk (B, n, K)`` and ``ey (B, K, r, n)`` (or
    ``(B, U, r, n)`` for distinct components, with ``index (B, K)`` of the plan).

    Two components fitted to the halves of one cluster have factors in unrelated coordinates
    (rotated, flipped), so their statistics cannot simply be added; re-expressing ``k``'s points in
    ``j``'s coordinates makes the merged statistics those of one valid ``q(y)``. Cost: ``n P D r``."""
    B, n, D = x.shape
    r = ey.shape[2]
    P = pairs.shape[1]
    j, k = pairs[..., 0], pairs[..., 1]
    if index is not None:
        j = torch.gather(index, 1, j)  # the distinct component of j
    r_k = torch.gather(r_nk, 2, k.unsqueeze(1).expand(B, n, P)).transpose(1, 2)  # (B, P, n)
    ey_j = torch.gather(ey, 1, j[..., None, None].expand(B, P, r, n))  # (B, P, r, n)
    rey = ey_j * r_k.unsqueeze(2)
    t_xy = (rey.reshape(B, P * r, n) @ x).reshape(B, P, r, D).transpose(-1, -2).double()
    return t_xy, rey.sum(-1).double(), (rey @ ey_j.transpose(-1, -2)).double()


def moved_stats(count, s1, s2, pair_terms, pairs: Tensor, p_inv: Tensor, log_det_p: Tensor) -> tuple:
    """Statistics ``(count, s1, s2, entropy change)`` ``(B, P, ...)`` that merging ``k`` into ``j``
    adds to ``j``, for every pair ``(j, k)`` of ``pairs (B, P, 2)``: ``k``'s counts, sums and squares
    as they are, its factor statistics in ``j``'s coordinates (``pair_terms`` of
    :func:`pair_factor_statistics` summed over the data, with ``q(y_n) = N(E_j[y_n], P_j^-1)``), and
    the change of the factors' entropy, ``N_k (H[q(y | j)] - H[q(y | k)])``. ``p_inv (B, K, r, r)``
    and ``log_det_p (B, K)``: ``P^-1`` and ``log |P|`` of the pass's plan."""
    t_xy, t_y, t_yy = pair_terms
    B, P, _ = pairs.shape
    j, k = pairs[..., 0], pairs[..., 1]
    sxy, sxx, _ = unpack_stats(s1, s2)
    D, q = sxy.shape[-2], sxy.shape[-1]
    r = q - 1
    n_k = torch.gather(count, 1, k)  # (B, P)
    x_k = torch.gather(sxy[..., -1], 1, k.unsqueeze(-1).expand(B, P, D))
    xx_k = torch.gather(sxx, 1, k.unsqueeze(-1).expand(B, P, D))
    p_inv_j = torch.gather(p_inv.double(), 1, j[..., None, None].expand(B, P, r, r))
    syy = t_yy.new_zeros(B, P, q, q)
    syy[..., :r, :r] = n_k[..., None, None] * p_inv_j + t_yy
    syy[..., :r, r] = t_y
    syy[..., r, :r] = t_y
    syy[..., r, r] = n_k
    new_s1, new_s2 = pack_stats(torch.cat([t_xy, x_k.unsqueeze(-1)], -1), xx_k, syy)
    ld = log_det_p.double()
    entropy = 0.5 * n_k * (torch.gather(ld, 1, k) - torch.gather(ld, 1, j))
    return n_k, new_s1, new_s2, entropy


def whiten_factor_stats(count: Tensor, s1: Tensor, s2: Tensor, min_count: float = 1.0) -> tuple:
    """Re-express every component's factors so that they have mean 0 and covariance ``I`` over its
    points: ``y' = R (y - c)`` with ``c`` the factors' mean and ``R = chol(Sigma_y)^-1``. Returns the
    transformed ``(s1, s2)`` and the change of the factors' entropy ``sum_k N_k log |R_k|`` ``(B,)``.

    ``q(y)`` transformed by an affine map is another Gaussian ``q(y)``, so the transformed statistics
    are exactly those of a valid variational distribution and the ELBO computed from them is exact.
    Loadings ``W' = W R^-1`` (and the mean moved by ``W c``) would leave the likelihood unchanged,
    while the factors' prior term and entropy, ``N (-tr(Sigma) + log |Sigma|) / 2`` before, reach
    their maximum ``-N r / 2`` after; the M-step then refits the loadings to the new factors. This is
    the parameter-expanded step of Qi & Jaakkola (2007) and Luttinen & Ilin (2010): without it, VB
    trades the loadings' scale against the factors' for hundreds of iterations (after merges
    especially, whose factors start in another component's coordinates). The callers keep whichever
    of the transformed and the original statistics gives the higher ELBO. Components with fewer
    than ``min_count`` points are left as they are."""
    sxy, sxx, syy = unpack_stats(s1, s2)
    q = syy.shape[-1]
    r = q - 1
    n = count.clamp_min(1e-300)[..., None]
    c = syy[..., :r, r] / n  # (B, K, r)
    sigma = syy[..., :r, :r] / n.unsqueeze(-1) - c.unsqueeze(-1) * c.unsqueeze(-2)
    chol, info = torch.linalg.cholesky_ex(_sym(sigma))
    ok = (count >= min_count) & (info == 0)
    eye = torch.eye(r, dtype=syy.dtype, device=syy.device)
    chol = torch.where(ok[..., None, None], chol, eye)
    rot = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)  # R = L^-1
    t = torch.zeros_like(syy)
    t[..., :r, :r] = rot
    t[..., :r, r] = -(rot @ torch.where(ok[..., None], c, torch.zeros_like(c)).unsqueeze(-1)).squeeze(-1)
    t[..., r, r] = 1.0
    new_s1, new_s2 = pack_stats(sxy @ t.transpose(-1, -2), sxx, _sym(t @ syy @ t.transpose(-1, -2)))
    gain = torch.where(ok, -0.5 * count * _chol_logdet(chol), torch.zeros_like(count))  # N log |R|
    return new_s1, new_s2, gain


def scale_factor_stats(count: Tensor, s1: Tensor, s2: Tensor, scale: Tensor) -> tuple:
    """Every component's factors multiplied by ``scale (B, K)``: ``y' = a y``, another Gaussian
    ``q(y)``, so the statistics stay exact. Returns ``(s1, s2, entropy change N_k r log a_k (B, K))``.
    The scale that VB finds for the factors (against the loadings, which absorb ``1 / a``) is a
    slow direction of coordinate ascent; a search over it in the M-step moves along it at once."""
    sxy, sxx, syy = unpack_stats(s1, s2)
    r = sxy.shape[-1] - 1
    t = torch.ones_like(syy[..., 0])  # (B, K, q)
    t[..., :r] = scale.unsqueeze(-1)
    new_s1, new_s2 = pack_stats(sxy * t.unsqueeze(-2), sxx, syy * t.unsqueeze(-1) * t.unsqueeze(-2))
    return new_s1, new_s2, count * r * torch.log(scale)
