"""The variational family written as a Pyro guide over the sites of :func:`dpgmm_model`.

The guide reads its parameters from a :class:`VariationalParams` (plain tensors from the natural
engine, or ``pyro.param`` leaves in the Pyro SVI engine). The assignment posterior ``q(z_n)`` is the
mean-field optimum given the globals, ``r_nk ∝ exp(E[log pi_k] + E[log N(x_n | mu_k, Lambda_k)])``;
the guide enumerates it (``TraceEnum_ELBO`` sums over it exactly), so ``z`` is never sampled while
fitting and the Pyro ELBO estimates the same bound that the natural engine computes in closed form.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from .distributions import Wishart
from .dpgmm import ModelSpec
from .family import VariationalParams, expected_log_likelihood, expected_log_weights
from .quadratic import QuadraticPlan

__all__ = ["assignment_log_probs", "dpgmm_guide"]


def assignment_log_probs(
    params: VariationalParams, x: Tensor, e_log_pi: Tensor | None = None, plan: QuadraticPlan | None = None
) -> Tensor:
    """Normalised mean-field ``log r`` ``(B, n, K)`` for ``x (B, n, D)`` (``plan``: see
    :func:`~dpmodels.models.family.quadratic_plan`)."""
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
    then sampled from it (the coupled model does not enumerate ``z``), components in raw order."""
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
                pyro.sample(
                    "mean", dist.Normal(params.mean, torch.rsqrt(beta.unsqueeze(-1) * precision)).to_event(1)
                )
        with pyro.plate("data", N, subsample_size=subsample_size, dim=-1) as idx:
            if log_resp is not None:
                pyro.sample("z", dist.Categorical(logits=log_resp[:, idx]))
                return
            log_r = assignment_log_probs(params, data[:, idx])  # (B, M, K)
            pyro.sample("z", dist.Categorical(logits=log_r), infer={"enumerate": "parallel"})
