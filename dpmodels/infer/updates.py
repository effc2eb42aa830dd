"""Closed-form pieces of coordinate-ascent / natural-gradient variational inference.

* :func:`e_step` — mean-field responsibilities of a chunk and its expected sufficient statistics;
* :func:`m_step` — the conjugate update of every global factor from (possibly rescaled) statistics;
* :func:`elbo_from_stats` — the exact ELBO (total nats per fit) at ``q(z)`` of the last E-step and
  the globals of the last M-step, computed from statistics alone (no extra pass over the data).

Statistics are accumulated in float64 on data centred at the prior mean (``shift``), which keeps
the scatter matrices accurate in float32 chunks. Natural parameters of the conjugate family are
affine in these statistics, so blending statistics with step ``rho`` is a natural-gradient step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from ..models.base_measure import BaseMeasure
from ..models.family import (
    LOG_2PI,
    VariationalParams,
    components_kl,
    concentration_kl,
    expected_concentration,
    expected_log_det_precision,
    expected_log_weights,
    second_moments,
    take_components,
    weights_kl,
)
from ..models.guide import assignment_log_probs
from ..priors import WeightPrior

__all__ = ["Stats", "e_step", "m_step", "elbo_from_stats", "select_fits"]


@dataclass
class Stats:
    """Expected sufficient statistics (float64): ``count (B, K)``, ``s1 (B, K, D)``,
    ``s2 (B, K, D, D)`` (full) or ``(B, K, D)`` (diag), assignment ``entropy (B,)``."""

    count: Tensor
    s1: Tensor
    s2: Tensor
    entropy: Tensor

    def __add__(self, other: Stats) -> Stats:
        return Stats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def scale(self, factor: float) -> Stats:
        return Stats(*(getattr(self, f.name) * factor for f in fields(self)))

    def blend(self, other: Stats, rho: float) -> Stats:
        """``(1 - rho) * self + rho * other``: one natural-gradient step towards ``other``."""
        return self.scale(1.0 - rho) + other.scale(rho)

    def permute(self, order: Tensor) -> Stats:
        """Reorder components per fit, ``order (B, K)``."""
        return Stats(*(take_components(t, order) for t in (self.count, self.s1, self.s2)), self.entropy)


STATS_BLOCK = 2048


def _blocked_sums(r: Tensor, x: Tensor, phi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``sum_n r_nk`` ``(B, K)``, ``sum_n r_nk x_n`` ``(B, K, D)`` and ``sum_n r_nk phi_n`` in float64.

    Sums run in float32 over blocks of at most ``STATS_BLOCK`` points and in float64 across
    blocks, so a long chunk does not lose the digits that the scatter ``S2 - S1 S1^T / N`` needs
    when clusters sit far from the centre. Blocks are views (no copies)."""
    B, n, K = r.shape
    full = (n // STATS_BLOCK) * STATS_BLOCK
    parts = [(0, full, STATS_BLOCK)] if full else []
    if n > full:
        parts.append((full, n, n - full))
    count = s1 = s2 = 0.0
    for start, stop, size in parts:
        nb = (stop - start) // size
        r_b = r[:, start:stop].reshape(B * nb, size, K).transpose(1, 2)  # (B nb, K, size)

        def block_sum(f: Tensor, r_b=r_b, start=start, stop=stop, nb=nb, size=size) -> Tensor:
            f_b = f[:, start:stop].reshape(B * nb, size, f.shape[-1])
            return (r_b @ f_b).reshape(B, nb, K, -1).double().sum(1)

        count = count + r_b.sum(-1).reshape(B, nb, K).double().sum(1)
        s1 = s1 + block_sum(x)
        s2 = s2 + block_sum(phi)
    return count, s1, s2


def e_step(params: VariationalParams, x: Tensor, e_log_pi: Tensor | None = None) -> tuple[Stats, Tensor]:
    """Responsibilities and statistics of a centred chunk ``x (B, n, D)``.

    Returns the chunk's :class:`Stats` (float64) and ``log r (B, n, K)``.
    """
    B, n, D = x.shape
    phi = second_moments(x, params.covariance)  # (B, n, D*D) or (B, n, D)
    log_r = assignment_log_probs(params, x, e_log_pi, phi)  # (B, n, K)
    r = log_r.exp()
    count, s1, s2 = _blocked_sums(r, x, phi)
    if params.covariance == "full":
        s2 = s2.reshape(B, -1, D, D)
    entropy = -torch.where(r > 0, r * log_r, torch.zeros_like(r)).double().sum((1, 2))  # (B,)
    return Stats(count, s1, s2, entropy), log_r


def m_step(
    stats: Stats,
    base: BaseMeasure,
    prior: WeightPrior,
    previous: VariationalParams | None = None,
) -> VariationalParams:
    """Conjugate update of all globals (float64) from centred statistics.

    ``base`` must be centred (``base.mean == 0``). The concentration, when learned, is updated after
    the sticks (coordinate ascent), starting from ``previous``'s ``E[alpha]``.
    """
    n_k = stats.count.clamp_min(0.0)  # (B, K)
    K = n_k.shape[-1]
    beta = base.mean_precision[:, None] + n_k
    mean = stats.s1 / beta.unsqueeze(-1)
    dof = base.dof[:, None] + n_k
    if base.covariance == "full":
        outer = stats.s1.unsqueeze(-1) * stats.s1.unsqueeze(-2) / beta[..., None, None]
        psi = base.scale.unsqueeze(1) + stats.s2 - outer
        psi = 0.5 * (psi + psi.transpose(-1, -2))
        comp = {"scale_tril": _safe_cholesky(psi, base.scale)}
    else:
        psi = base.scale.unsqueeze(1) + stats.s2 - stats.s1.pow(2) / beta.unsqueeze(-1)
        comp = {"scale": torch.maximum(psi, 1e-3 * base.scale.unsqueeze(1))}
    params = VariationalParams(base.covariance, mean, beta, dof, **comp)
    if not prior.uses_sticks:
        alpha = _prior_concentration(prior, previous, n_k)
        params.dirichlet = alpha.unsqueeze(-1) / K + n_k
        return params
    if K == 1:
        params.stick_a = n_k.new_ones(n_k.shape[0], 0)
        params.stick_b = n_k.new_ones(n_k.shape[0], 0)
        return params
    alpha = _prior_concentration(prior, previous, n_k)  # (B,)
    k = torch.arange(1, K, dtype=n_k.dtype, device=n_k.device)
    tail = n_k.flip(-1).cumsum(-1).flip(-1)[:, 1:]  # sum_{j > k} N_j, (B, K-1)
    params.stick_a = (1.0 - prior.discount) + n_k[:, :-1]
    params.stick_b = alpha.unsqueeze(-1) + k * prior.discount + tail
    if prior.learn_concentration:
        e_log_1mv = torch.digamma(params.stick_b) - torch.digamma(params.stick_a + params.stick_b)
        params.conc_shape = torch.full_like(alpha, prior.concentration_shape + K - 1)
        params.conc_rate = prior.concentration_rate - e_log_1mv.sum(-1)
    return params


def _prior_concentration(prior: WeightPrior, previous: VariationalParams | None, n_k: Tensor) -> Tensor:
    if prior.learn_concentration and previous is not None and previous.conc_shape is not None:
        return expected_concentration(previous, prior).to(n_k)
    return torch.full_like(n_k[:, 0], prior.concentration)


def _safe_cholesky(psi: Tensor, psi0: Tensor) -> Tensor:
    """Cholesky of ``Psi``; where it fails (round-off), fall back to ``Psi`` plus a ridge."""
    tril, info = torch.linalg.cholesky_ex(psi)
    if bool((info != 0).any()):
        ridge = 1e-6 * psi0.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None, None]
        eye = torch.eye(psi.shape[-1], dtype=psi.dtype, device=psi.device)
        tril = torch.linalg.cholesky(psi + ridge * eye)
    return tril


def elbo_from_stats(stats: Stats, params: VariationalParams, base: BaseMeasure, prior: WeightPrior) -> Tensor:
    """Total ELBO (nats, per fit, ``(B,)``) from centred statistics and float64 parameters."""
    D = params.num_features
    n_k = stats.count
    m = params.mean  # (B, K, D), centred
    const = 0.5 * expected_log_det_precision(params) - 0.5 * D * LOG_2PI - 0.5 * D / params.mean_precision
    if params.covariance == "full":
        s1m = stats.s1.unsqueeze(-1) * m.unsqueeze(-2)  # (B, K, D, D)
        scatter = (
            stats.s2 - s1m - s1m.transpose(-1, -2) + n_k[..., None, None] * m.unsqueeze(-1) * m.unsqueeze(-2)
        )
        trace = torch.cholesky_solve(scatter, params.scale_tril).diagonal(dim1=-2, dim2=-1).sum(-1)
    else:
        scatter = stats.s2 - 2 * stats.s1 * m + n_k.unsqueeze(-1) * m.pow(2)
        trace = (scatter / params.scale).sum(-1)
    data_term = (n_k * const - 0.5 * params.dof * trace).sum(-1)
    assign_term = (n_k * expected_log_weights(params)).sum(-1)
    return (
        data_term
        + assign_term
        + stats.entropy
        - weights_kl(params, prior)
        - components_kl(params, base)
        - concentration_kl(params, prior)
    )


def select_fits(
    mask: Tensor, when_true: VariationalParams, when_false: VariationalParams
) -> VariationalParams:
    """Per-fit choice between two parameter sets; ``mask (B,)``."""
    out = {}
    for name, a in when_true.tensors().items():
        b = getattr(when_false, name)
        out[name] = torch.where(mask.reshape((-1,) + (1,) * (a.dim() - 1)), a, b)
    return replace(when_true, **out)
