"""The generative story: a truncated Dirichlet-process (or other weight prior) Gaussian mixture.

For each of ``B`` independent fits (the outer ``fits`` plate)::

    alpha      ~ Gamma(shape, rate)                       (only when the concentration is learned)
    v_k        ~ Beta(a_k, b_k),  k < K      (stick breaking)   or   pi ~ Dirichlet(alpha/K)
                 (the weight prior's own sites: WeightPrior.model_sites in dpmodels.priors)
    Lambda_k   ~ Wishart(nu0, Psi0^-1)        (full)      or   lambda_kd ~ Gamma(nu0/2, Psi0_d/2)
    mu_k       ~ N(m0, (beta0 Lambda_k)^-1)
    z_n        ~ Categorical(pi)              (enumerated, never sampled while fitting)
    x_n        ~ N(mu_{z_n}, Lambda_{z_n}^-1)
    [optional] exp(beta * sum_{n~m} [z_n = z_m])   Potts factor over grid neighbours (dpmodels.spatial)

Low-rank components (``covariance="lowrank"``, rank ``r``, :mod:`dpmodels.models.lowrank`) replace
the ``mean`` site by one row ``w_kd = (W_kd1, ..., W_kdr, mu_kd)`` per feature, and give each point
factors drawn after its assignment (so that a guide's ``q(y_n | z_n)`` may depend on ``z_n``)::

    lambda_kd  ~ Gamma(nu0/2, Psi0_d/2)
    w_kd       ~ N((0, ..., 0, m0_d), (lambda_kd A0)^-1),  A0 = diag(loading_precision x r, beta0)
    z_n        ~ Categorical(pi)
    y_n        ~ N(0, I_r)
    x_n        ~ N(W_{z_n} y_n + mu_{z_n}, diag(lambda_{z_n})^-1)

Sites: ``concentration (B, 1)``, ``sticks (B, K-1)`` or ``weights (B, 1 | K)``, ``precision``,
``mean (B, K | D)``, ``z (B, N)``, ``x (B, N | D)``; low-rank components have ``precision (B, K | D)``,
``loadings (B, K | D, r+1)`` (each feature's row ``w_kd``, mean last) instead of ``mean``, and
``factors (B, N | r)`` after ``z``. Plates: ``fits`` (dim -2), ``components`` and
``breaks`` (dim -1), ``data`` (dim -1, optionally subsampled with Pyro's N / M scaling).
``max_plate_nesting`` is 2; enumeration uses dim -3.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from torch import Tensor

from ..priors import WeightPrior
from .base_measure import BaseMeasure
from .distributions import Wishart

__all__ = ["ModelSpec", "dpgmm_model", "MAX_PLATE_NESTING", "component_distribution"]

MAX_PLATE_NESTING = 2


@dataclass
class ModelSpec:
    """Everything the model needs besides data: weight prior, base measure, truncation ``K``."""

    prior: WeightPrior
    base: BaseMeasure
    truncation: int

    @property
    def covariance(self) -> str:
        return self.base.covariance

    @property
    def batch_size(self) -> int:
        return self.base.mean.shape[0]


def _sample_components(base: BaseMeasure, K: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Sample the component sites inside ``fits`` x ``components``; returns ``(precision, mean,
    loadings)``: ``precision (B, K, D, D)`` (full) or ``(B, K, D)``, ``mean (B, K, D)``, and the
    loadings ``W (B, K, D, r)`` of low-rank components (``None`` for the other types)."""
    m0 = base.mean.unsqueeze(-2)  # (B, 1, D)
    beta0 = base.mean_precision[:, None]  # (B, 1)
    nu0 = base.dof[:, None]
    with pyro.plate("components", K, dim=-1):
        if base.covariance == "full":
            psi0 = base.scale.unsqueeze(-3)  # (B, 1, D, D)
            precision = pyro.sample("precision", Wishart(nu0, precision_matrix=psi0))
            mean = pyro.sample(
                "mean", dist.MultivariateNormal(m0, precision_matrix=beta0[..., None, None] * precision)
            )
            return precision, mean, None
        rate0 = 0.5 * base.scale.unsqueeze(-2)  # (B, 1, D)
        precision = pyro.sample(
            "precision", dist.Gamma((0.5 * nu0).unsqueeze(-1).expand_as(rate0), rate0).to_event(1)
        )  # (B, K, D)
        if base.covariance == "lowrank":
            rows = pyro.sample("loadings", _row_prior(base, precision))  # (B, K, D, r+1)
            return precision, rows[..., -1], rows[..., :-1]
        mean = pyro.sample("mean", dist.Normal(m0, torch.rsqrt(beta0.unsqueeze(-1) * precision)).to_event(1))
    return precision, mean, None  # (B, K, D); (B, K, D)


def _row_prior(base: BaseMeasure, precision: Tensor):
    """Prior of the low-rank rows ``w_kd ~ N((0, ..., 0, m0_d), (lambda_kd A0)^-1)``, event shape
    ``(D, r+1)``, given the noise precisions ``precision (..., B, K, D)``."""
    r = base.rank
    a0 = torch.ones(base.mean.shape[0], r + 1, dtype=base.mean.dtype, device=base.mean.device)
    a0 = torch.cat([a0[:, :r] * base.loading_precision, base.mean_precision[:, None]], -1)  # diag A0 (B, q)
    loc = torch.cat([base.mean.new_zeros(base.mean.shape + (r,)), base.mean.unsqueeze(-1)], -1)  # (B, D, q)
    prec = precision[..., None, None] * torch.diag_embed(a0)[:, None, None]  # (..., B, K, D, q, q)
    return dist.MultivariateNormal(loc.unsqueeze(-3), precision_matrix=prec).to_event(1)


def component_distribution(
    covariance: str,
    mean: Tensor,
    precision: Tensor,
    z: Tensor,
    loadings: Tensor | None = None,
    factors: Tensor | None = None,
):
    """The Gaussian of component ``z`` for every fit and point; ``z`` broadcasts over ``(B, N)``.

    Low-rank components: the Gaussian given the point's factors ``factors (..., B, N, r)``,
    ``N(W_z y + mu_z, diag(lambda_z)^-1)`` with ``loadings W (..., B, K, D, r)``."""
    loc = Vindex(mean.unsqueeze(-3))[..., z, :]  # (..., B, N, D)
    if covariance == "full":
        prec = Vindex(precision.unsqueeze(-4))[..., z, :, :]
        return dist.MultivariateNormal(loc, precision_matrix=prec)
    if covariance == "lowrank":
        w = Vindex(loadings.unsqueeze(-4))[..., z, :, :]  # (..., B, N, D, r)
        loc = loc + (w @ factors.unsqueeze(-1)).squeeze(-1)  # W_z y + mu_z  (..., B, N, D)
    prec = Vindex(precision.unsqueeze(-3))[..., z, :]
    return dist.Normal(loc, torch.rsqrt(prec)).to_event(1)


def dpgmm_model(
    data: Tensor | None,
    spec: ModelSpec,
    subsample_size: int | None = None,
    num_points: int | None = None,
    coupling: float = 0.0,
    edges: Tensor | None = None,
) -> Tensor:
    """The Pyro model. ``data (B, N, D)``, or ``None`` with ``num_points`` for prior predictive draws.

    ``subsample_size`` turns on minibatches: Pyro scales the data terms by ``N / M``.
    ``edges (E, 2)`` (pairs of neighbouring points on the layer's grid, see
    :mod:`dpmodels.spatial`) couples the assignments: the joint gains the Potts factor
    ``exp(coupling * sum_{(n, m) in edges} [z_n = z_m])`` (site ``potts``, unnormalised), and ``z``
    is then sampled rather than enumerated (score it with ``Trace_ELBO``). ``coupling = 0`` is the
    mixture exactly. Returns the observed (or sampled) ``x`` of the current (sub)sample.
    """
    B, K = spec.batch_size, spec.truncation
    N = data.shape[1] if data is not None else num_points
    if N is None:
        raise ValueError("dpgmm_model needs data of shape (B, N, D) or num_points for prior draws.")
    if edges is not None and subsample_size is not None:
        raise ValueError("coupled assignments (edges) need every point: use subsample_size=None.")
    z_infer = {"enumerate": "parallel"} if edges is None else {}
    with pyro.plate("fits", B, dim=-2):
        log_pi = spec.prior.model_sites(K, spec.base.mean)  # (B, 1, K)
        precision, mean, loadings = _sample_components(spec.base, K)
        with pyro.plate("data", N, subsample_size=subsample_size, dim=-1) as idx:
            z = pyro.sample("z", dist.Categorical(logits=log_pi), infer=z_infer)  # (B, N)
            factors = None
            if loadings is not None:  # y_n ~ N(0, I_r), after z_n
                r = loadings.shape[-1]
                zeros = mean.new_zeros(r)
                factors = pyro.sample("factors", dist.Normal(zeros, 1.0).to_event(1))  # (..., B, N, r)
            obs = None if data is None else data[:, idx]
            comp = component_distribution(spec.covariance, mean, precision, z, loadings, factors)
            x = pyro.sample("x", comp, obs=obs)
        if edges is not None:
            agree = (z[..., edges[:, 0]] == z[..., edges[:, 1]]).sum(-1, keepdim=True)  # (B, 1)
            pyro.factor("potts", coupling * agree.to(log_pi.dtype))
    return x
