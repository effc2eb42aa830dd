"""The variational family written as a Pyro guide over the sites of :func:`dpgmm_model`.

The guide reads its parameters from a :class:`VariationalParams` (plain tensors from the natural
engine, or ``pyro.param`` leaves in the Pyro SVI engine). The assignment posterior ``q(z_n)`` is the
mean-field optimum given the globals, ``r_nk ∝ exp(E[log pi_k] + E[log N(x_n | mu_k, Lambda_k)])``;
the guide enumerates it (``TraceEnum_ELBO`` sums over it exactly), so ``z`` is never sampled while
fitting and the Pyro ELBO estimates the same bound that the natural engine computes in closed form.

Low-rank components (:mod:`dpmodels.models.lowrank`): ``q(lambda_kd)`` Gamma and ``q(w_kd |
lambda_kd) = N(m_kd, (lambda_kd A_k)^-1)`` for the ``precision`` and ``loadings`` sites, and each
point's factors drawn from ``q(y_n | z_n = k) = N(P_k^-1 h_nk, P_k^-1)`` for the enumerated ``z_n``;
the responsibilities are those of the factors integrated out
(:meth:`~dpmodels.models.lowrank.LowRankPlan.factors`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from torch import Tensor

from .distributions import Wishart
from .dpgmm import ModelSpec
from .family import VariationalParams, expected_log_likelihood, expected_log_weights
from .lowrank import LowRankPlan, lowrank_plan
from .quadratic import QuadraticPlan

__all__ = ["assignment_log_probs", "dpgmm_guide"]


def assignment_log_probs(
    params: VariationalParams,
    x: Tensor,
    e_log_pi: Tensor | None = None,
    plan: QuadraticPlan | LowRankPlan | None = None,
) -> Tensor:
    """Normalised mean-field ``log r`` ``(B, n, K)`` for ``x (B, n, D)`` (``plan``: see
    :func:`~dpmodels.models.family.quadratic_plan`; for low-rank components the factors are
    integrated out, :meth:`~dpmodels.models.lowrank.LowRankPlan.factors`)."""
    if e_log_pi is None:
        e_log_pi = expected_log_weights(params)
    logits = e_log_pi.unsqueeze(1) + expected_log_likelihood(params, x, plan)  # (B, n, K)
    return torch.log_softmax(logits, dim=-1)


def dpgmm_guide(
    data: Tensor,
    spec: ModelSpec,
    params: VariationalParams,
    subsample_size: int | None = None,
    log_resp: Tensor | None = None,
) -> None:
    """Pyro guide matching :func:`dpgmm_model` site by site. ``data (B, N, D)``.

    ``log_resp (B, N, K)``: a given ``log q(z)`` (e.g. spatially coupled responsibilities); ``z`` is
    then sampled from it (the coupled model does not enumerate ``z``), components in raw order.
    Low-rank components: ``factors`` is drawn from ``q(y_n | z_n)`` at the enumerated (or sampled)
    ``z_n``."""
    B, N, _ = data.shape
    K = spec.truncation
    with pyro.plate("fits", B, dim=-2):
        spec.prior.guide_sites(params)  # concentration, sticks or weights
        beta = params.mean_precision
        with pyro.plate("components", K, dim=-1):
            if params.covariance == "full":
                psi = params.scale_tril @ params.scale_tril.transpose(-1, -2)  # (B, K, D, D)
                precision = pyro.sample("precision", Wishart(params.dof, precision_matrix=psi))
                pyro.sample(
                    "mean",
                    dist.MultivariateNormal(params.mean, precision_matrix=beta[..., None, None] * precision),
                )
            else:
                rate = 0.5 * params.scale  # (B, K, D)
                precision = pyro.sample(
                    "precision",
                    dist.Gamma((0.5 * params.dof).unsqueeze(-1).expand_as(rate), rate).to_event(1),
                )
                if params.covariance == "lowrank":
                    pyro.sample("loadings", _row_posterior(params, precision))
                else:
                    pyro.sample(
                        "mean",
                        dist.Normal(params.mean, torch.rsqrt(beta.unsqueeze(-1) * precision)).to_event(1),
                    )
        plan = lowrank_plan(params) if params.covariance == "lowrank" else None
        with pyro.plate("data", N, subsample_size=subsample_size, dim=-1) as idx:
            x = data[:, idx]  # (B, M, D)
            if log_resp is not None:
                z = pyro.sample("z", dist.Categorical(logits=log_resp[:, idx]))
            else:
                log_r = assignment_log_probs(params, x, plan=plan)  # (B, M, K)
                z = pyro.sample("z", dist.Categorical(logits=log_r), infer={"enumerate": "parallel"})
            if plan is not None:
                _factor_site(plan, x, z)


def _row_posterior(params: VariationalParams, precision: Tensor):
    """``q(w_kd | lambda_kd) = N(m_kd, (lambda_kd A_k)^-1)``, event shape ``(D, r+1)``, for the
    noise precisions ``precision (..., B, K, D)``; ``m_kd = (loadings_kd, mean_kd)``."""
    rows = torch.cat([params.loadings, params.mean.unsqueeze(-1)], -1)  # (B, K, D, r+1)
    prec = precision[..., None, None] * params.factor_precision.unsqueeze(-3)  # (..., B, K, D, r+1, r+1)
    return dist.MultivariateNormal(rows, precision_matrix=prec).to_event(1)


def _factor_site(plan: LowRankPlan, x: Tensor, z: Tensor) -> Tensor:
    """Sample ``factors`` from ``q(y_n | z_n) = N(P_z^-1 h_nz, P_z^-1)`` for ``x (B, M, D)`` and the
    assignments ``z`` (enumerated or sampled; broadcasts over ``(B, M)``); ``plan``: the
    :class:`~dpmodels.models.lowrank.LowRankPlan` of the parameters."""
    _, ey = plan.factors(x)  # P^-1 h  (B, K, r, M)
    loc = Vindex(ey.permute(0, 3, 1, 2))[..., z, :]  # (..., B, M, r)
    cov = Vindex(plan.p_inv.unsqueeze(-4))[..., z, :, :]  # P_z^-1  (..., B, M | 1, r, r)
    return pyro.sample("factors", dist.MultivariateNormal(loc, covariance_matrix=cov))
