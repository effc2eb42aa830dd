"""The conjugate mean-field variational family and its closed-form expectations.

``q(v or pi) q(alpha) prod_k q(mu_k, Lambda_k) prod_n q(z_n)`` with

* weights: independent ``Beta(stick_a, stick_b)`` sticks (stick-breaking priors) or ``Dirichlet``
  (finite); their prior-specific math lives on the prior object (:mod:`dpmodels.priors`);
* concentration (when learned): ``Gamma(conc_shape, conc_rate)``;
* components: Normal–Wishart ``(mean, mean_precision, dof, Psi = scale_tril scale_tril^T)`` for full
  covariance, or Normal–Gamma ``(mean, mean_precision, dof, Psi)`` with
  ``lambda_d ~ Gamma(dof / 2, Psi_d / 2)`` for diagonal covariance;
* assignments: ``q(z_n) = Categorical(r_n)``, recomputed from the globals (never stored).

Everything here is a pure function of tensors shaped ``(B, K, ...)``. The same parameters drive the
Pyro guide (:mod:`dpmodels.models.guide`), so Pyro can score exactly the family that the
natural-gradient engine updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from ..priors import (
    WeightPrior,
    beta_expected_log_weights,
    beta_expected_weights,
    dirichlet_expected_log_weights,
    dirichlet_expected_weights,
    gamma_kl,
)
from .base_measure import BaseMeasure
from .lowrank import (
    LowRankPlan,
    lowrank_expected_log_det_precision,
    lowrank_kl_terms,
    lowrank_log_predictive,
    lowrank_plan,
)
from .quadratic import BLOCK_ELEMENTS, QuadraticPlan, plan_quadratic, second_moments

__all__ = [
    "VariationalParams",
    "take_components",
    "expected_log_weights",
    "expected_weights",
    "expected_log_det_precision",
    "expected_log_likelihood",
    "second_moments",
    "quadratic_plan",
    "log_predictive_components",
    "predictive_plan",
    "weights_kl",
    "components_kl",
    "components_kl_terms",
    "concentration_kl",
]

LOG_2PI = math.log(2 * math.pi)


@dataclass
class VariationalParams:
    """Parameters of the variational family for ``B`` fits with truncation ``K``.

    ``stick_a, stick_b (B, K-1)`` or ``dirichlet (B, K)``; ``conc_shape, conc_rate (B,)`` when the
    concentration is learned; ``mean (B, K, D)``, ``mean_precision (B, K)``, ``dof (B, K)``;
    ``scale_tril (B, K, D, D)`` (full) or ``scale (B, K, D)`` (diag and lowrank); ``loadings
    (B, K, D, r)`` and ``factor_precision (B, K, r+1, r+1)`` (lowrank, :mod:`dpmodels.models.lowrank`).
    """

    covariance: str
    mean: Tensor
    mean_precision: Tensor
    dof: Tensor
    scale_tril: Tensor | None = None
    scale: Tensor | None = None
    loadings: Tensor | None = None
    factor_precision: Tensor | None = None
    stick_a: Tensor | None = None
    stick_b: Tensor | None = None
    dirichlet: Tensor | None = None
    conc_shape: Tensor | None = None
    conc_rate: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.mean.shape[0]

    @property
    def truncation(self) -> int:
        return self.mean.shape[1]

    @property
    def num_features(self) -> int:
        return self.mean.shape[2]

    def tensors(self) -> dict[str, Tensor]:
        """The non-empty tensor fields by name."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)
        }

    def map(self, fn) -> VariationalParams:
        """Apply ``fn`` to every tensor field (e.g. dtype/device moves, detaching)."""
        return replace(self, **{k: fn(v) for k, v in self.tensors().items()})


def take_components(t: Tensor, order: Tensor) -> Tensor:
    """Reorder the component axis (dim 1) of ``t (B, K, ...)`` per fit by ``order (B, K)``."""
    idx = order.reshape(order.shape + (1,) * (t.dim() - 2)).expand_as(t)
    return torch.gather(t, 1, idx)


def expected_log_weights(params: VariationalParams) -> Tensor:
    """``E_q[log pi]`` ``(B, K)``."""
    if params.dirichlet is not None:
        return dirichlet_expected_log_weights(params.dirichlet)
    return beta_expected_log_weights(params.stick_a, params.stick_b)


def expected_weights(params: VariationalParams) -> Tensor:
    """``E_q[pi]`` ``(B, K)``."""
    if params.dirichlet is not None:
        return dirichlet_expected_weights(params.dirichlet)
    return beta_expected_weights(params.stick_a, params.stick_b)


def _log_det_from_tril(tril: Tensor) -> Tensor:
    return 2.0 * torch.log(tril.diagonal(dim1=-2, dim2=-1)).sum(-1)


def _multi_digamma_sum(half_dof: Tensor, D: int) -> Tensor:
    """``sum_{i=1}^D digamma(half_dof + (1 - i) / 2)``."""
    offsets = -0.5 * torch.arange(D, dtype=half_dof.dtype, device=half_dof.device)
    return torch.digamma(half_dof.unsqueeze(-1) + offsets).sum(-1)


def expected_log_det_precision(params: VariationalParams) -> Tensor:
    """``E_q[log |Lambda_k|]`` ``(B, K)``."""
    D, nu = params.num_features, params.dof
    if params.covariance == "lowrank":
        return lowrank_expected_log_det_precision(params)
    if params.covariance == "full":
        return _multi_digamma_sum(0.5 * nu, D) + D * math.log(2.0) - _log_det_from_tril(params.scale_tril)
    return D * torch.digamma(0.5 * nu) - torch.log(0.5 * params.scale).sum(-1)


def _inverse_tril(tril: Tensor) -> Tensor:
    eye = torch.eye(tril.shape[-1], dtype=tril.dtype, device=tril.device).expand_as(tril)
    return torch.linalg.solve_triangular(tril, eye, upper=False)


def quadratic_plan(params: VariationalParams, form: str | None = None) -> QuadraticPlan | LowRankPlan:
    """The :class:`~dpmodels.models.quadratic.QuadraticPlan` of ``params``' components (``Psi_k``):
    build it once per pass over the data and hand it to :func:`expected_log_likelihood`. Low-rank
    components get a :class:`~dpmodels.models.lowrank.LowRankPlan`."""
    if params.covariance == "lowrank":
        return lowrank_plan(params)
    return plan_quadratic(params.covariance, params.mean, params.scale_tril, params.scale, form)


def _mahalanobis(params: VariationalParams, x: Tensor) -> Tensor:
    """``(x_n - m_k)^T Psi_k^-1 (x_n - m_k)`` ``(B, n, K)`` for ``x (B, n, D)``."""
    return quadratic_plan(params).mahalanobis(x)


def expected_log_likelihood(
    params: VariationalParams, x: Tensor, plan: QuadraticPlan | None = None
) -> Tensor:
    """``E_q[log N(x_n | mu_k, Lambda_k^-1)]`` ``(B, n, K)`` for ``x (B, n, D)``.

    ``plan``: :func:`quadratic_plan` of ``params``, when the caller evaluates many chunks. Low-rank
    components: the factors ``y_n`` integrated over their mean-field posterior
    (:class:`~dpmodels.models.lowrank.LowRankPlan`).
    """
    if params.covariance == "lowrank":
        return (plan or quadratic_plan(params)).expected_log_likelihood(x)
    D = params.num_features
    const = 0.5 * expected_log_det_precision(params) - 0.5 * D * LOG_2PI - 0.5 * D / params.mean_precision
    maha = (plan or quadratic_plan(params)).mahalanobis(x)
    return const.unsqueeze(1) - 0.5 * params.dof.unsqueeze(1) * maha


def predictive_plan(params: VariationalParams) -> QuadraticPlan | None:
    """The float64 :class:`QuadraticPlan` that :func:`log_predictive_components` needs (full
    covariance; ``None`` for diagonal), to build once for many chunks."""
    if params.covariance != "full":
        return None
    return quadratic_plan(params.map(lambda t: t.double()))


def log_predictive_components(
    params: VariationalParams, x: Tensor, plan: QuadraticPlan | None = None
) -> Tensor:
    """Posterior predictive log density of each component (Student-t), ``(B, n, K)``.

    Full: ``St(x | m, Psi (1 + beta) / (beta nu'), nu')`` with ``nu' = nu + 1 - D``. Diagonal: a
    product of 1-D Student-t densities with ``nu`` degrees of freedom. ``plan``:
    :func:`predictive_plan` of ``params`` (built here when not given).

    Computed in float64: with ``nu`` near the number of fitted points, differences such as
    ``lgamma((nu + 1) / 2) - lgamma(nu / 2)`` lose whole nats in float32 (seen as a 1.4 nats/point
    error at 10 M points). Memory: the quadratic forms are blocked as
    :mod:`dpmodels.models.quadratic` states; the diagonal form's ``(B, n, K, D)`` terms are
    evaluated in blocks of at most ``BLOCK_ELEMENTS`` values.
    """
    out_dtype = x.dtype
    params, x = params.map(lambda t: t.double()), x.double()
    if params.covariance == "lowrank":
        return lowrank_log_predictive(params, x).to(out_dtype)
    if plan is None:
        plan = predictive_plan(params)
    return _log_predictive_components(params, x, plan).to(out_dtype)


def _log_predictive_components(params: VariationalParams, x: Tensor, plan: QuadraticPlan | None) -> Tensor:
    D, beta = params.num_features, params.mean_precision
    if params.covariance == "full":
        nu = params.dof + 1 - D  # (B, K)
        log_det_sigma = D * torch.log((1 + beta) / (beta * nu)) + _log_det_from_tril(params.scale_tril)
        maha = plan.mahalanobis(x) * (beta * nu / (1 + beta)).unsqueeze(1)  # (B, n, K)
        nu_, ldet = nu.unsqueeze(1), log_det_sigma.unsqueeze(1)
        return (
            torch.lgamma(0.5 * (nu_ + D))
            - torch.lgamma(0.5 * nu_)
            - 0.5 * D * torch.log(nu_ * math.pi)
            - 0.5 * ldet
            - 0.5 * (nu_ + D) * torch.log1p(maha / nu_)
        )
    nu = params.dof.unsqueeze(1).unsqueeze(-1)  # (B, 1, K, 1)
    var = (params.scale * ((1 + beta) / (beta * params.dof)).unsqueeze(-1)).unsqueeze(1)  # (B,1,K,D)
    const = (torch.lgamma(0.5 * (nu + 1)) - torch.lgamma(0.5 * nu) - 0.5 * torch.log(nu * math.pi * var)).sum(
        -1
    )
    B, n, K = x.shape[0], x.shape[1], params.truncation
    step = max(1, BLOCK_ELEMENTS // max(1, B * K * D))  # (B, step, K, D) temporaries at most
    parts = []
    for i in range(0, n, step):
        z2 = (x[:, i : i + step].unsqueeze(2) - params.mean.unsqueeze(1)).pow(2) / var  # (B, m, K, D)
        parts.append(const - 0.5 * ((nu + 1) * torch.log1p(z2 / nu)).sum(-1))
    return torch.cat(parts, 1) if parts else x.new_zeros(B, 0, K)


def weights_kl(params: VariationalParams, prior: WeightPrior) -> Tensor:
    """``E_q[log q(weights)] - E_q[log p(weights | alpha)]`` summed over components, ``(B,)``
    (:meth:`WeightPrior.weights_kl <dpmodels.priors.WeightPrior.weights_kl>`)."""
    return prior.weights_kl(params)


def concentration_kl(params: VariationalParams, prior: WeightPrior) -> Tensor:
    """``KL(q(alpha) || Gamma hyperprior)`` ``(B,)``; zero when alpha is fixed."""
    return prior.concentration_kl(params)


def components_kl(params: VariationalParams, base: BaseMeasure) -> Tensor:
    """``KL(q(mu, Lambda) || base measure)`` summed over components, ``(B,)``."""
    return components_kl_terms(params, base).sum(-1)


def components_kl_terms(params: VariationalParams, base: BaseMeasure) -> Tensor:
    """``KL(q(mu_k, Lambda_k) || base measure)`` per component, ``(B, K)``."""
    if params.covariance == "lowrank":
        return lowrank_kl_terms(params, base)
    D = params.num_features
    beta, nu = params.mean_precision, params.dof  # (B, K)
    beta0, nu0 = base.mean_precision.unsqueeze(-1), base.dof.unsqueeze(-1)  # (B, 1)
    diff = params.mean - base.mean.unsqueeze(1)  # (B, K, D)
    if params.covariance == "full":
        tril = params.scale_tril
        inv = _inverse_tril(tril)  # (B, K, D, D)
        maha = (inv @ diff.unsqueeze(-1)).squeeze(-1).pow(2).sum(-1)  # (B, K)
        trace = (inv @ base.scale_tril.unsqueeze(1)).pow(2).sum((-1, -2))  # tr(Psi0 Psi^-1)
        e_logdet = expected_log_det_precision(params)
        log_z_q = _wishart_log_norm(nu, _log_det_from_tril(tril), D)
        log_z_p = _wishart_log_norm(nu0, _log_det_from_tril(base.scale_tril).unsqueeze(-1), D)
        kl_wishart = 0.5 * (nu - nu0) * e_logdet - 0.5 * nu * D + 0.5 * nu * trace - log_z_q + log_z_p
        kl_normal = 0.5 * (D * beta0 / beta + beta0 * nu * maha - D + D * torch.log(beta / beta0))
        return kl_wishart + kl_normal
    a, rate = 0.5 * nu.unsqueeze(-1), 0.5 * params.scale  # (B, K, 1), (B, K, D)
    a0, rate0 = 0.5 * nu0.unsqueeze(-1), 0.5 * base.scale.unsqueeze(1)
    kl_gamma = gamma_kl(a.expand_as(rate), rate, a0.expand_as(rate), rate0.expand_as(rate))
    beta_, beta0_ = beta.unsqueeze(-1), beta0.unsqueeze(-1)
    kl_normal = 0.5 * (beta0_ / beta_ + beta0_ * (a / rate) * diff.pow(2) - 1 + torch.log(beta_ / beta0_))
    return (kl_gamma + kl_normal).sum(-1)


def _wishart_log_norm(nu: Tensor, log_det_psi: Tensor, D: int) -> Tensor:
    """Log normaliser of ``Wishart(nu, scale=Psi^-1)``: ``nu D/2 log 2 - nu/2 log|Psi| + log Gamma_D(nu/2)``."""
    return 0.5 * nu * D * math.log(2.0) - 0.5 * nu * log_det_psi + torch.mvlgamma(0.5 * nu, D)
