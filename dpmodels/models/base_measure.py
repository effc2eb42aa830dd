"""The base measure of the mixture: a conjugate prior on each component's mean and precision.

* ``covariance="full"``: Normal–Wishart. ``Lambda ~ Wishart(dof, scale=Psi^-1)`` and
  ``mu | Lambda ~ N(mean, (mean_precision * Lambda)^-1)``; ``E[Lambda] = dof * Psi^-1``.
* ``covariance="diag"``: Normal–Gamma per feature. ``lambda_d ~ Gamma(dof / 2, Psi_d / 2)`` and
  ``mu_d | lambda_d ~ N(mean_d, 1 / (mean_precision * lambda_d))``; ``E[lambda_d] = dof / Psi_d``.
* ``covariance="lowrank"``: the diagonal prior on the noise precisions and means, plus ``rank``
  loadings per feature, ``W_dj | lambda_d ~ N(0, 1 / (loading_precision * lambda_d))``
  (:mod:`dpmodels.models.lowrank`).

Defaults follow the data, as scikit-learn's ``BayesianGaussianMixture`` does: ``mean`` is the data
mean, ``mean_precision`` is 1, ``dof`` is ``D`` and ``Psi`` is the empirical covariance (variances
for ``"diag"``) plus a small ridge. With these, a component's prior expected covariance is the
data covariance divided by ``D``: clusters are expected to be smaller than the whole cloud.

Linearly dependent features (a duplicated column, a column that is the sum of others, rows that
sum to one) make the empirical covariance singular. ``Psi`` then gets a ridge of
``singular_ridge`` (1e-3) times its mean variance, so every component's scale matrix stays
positive definite while the directions the data do not span get a small, data-relative width.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..data.source import PointSource

__all__ = ["COVARIANCE_TYPES", "BaseMeasure", "check_rank", "empirical_base_measure", "singular_fits"]

COVARIANCE_TYPES = ("full", "diag", "lowrank")


@dataclass
class BaseMeasure:
    """Hyperparameters of the component prior for ``B`` independent fits.

    Shapes: ``mean (B, D)``, ``mean_precision (B,)``, ``dof (B,)``, ``scale`` is ``Psi``:
    ``(B, D, D)`` for full covariance, ``(B, D)`` for diagonal and low-rank. ``rank`` and
    ``loading_precision``: the low-rank components' number of factors and their loadings' prior
    precision (relative to the noise precision, see :func:`empirical_base_measure`); unused by the
    other types.
    """

    covariance: str
    mean: Tensor
    mean_precision: Tensor
    dof: Tensor
    scale: Tensor
    rank: int = 0
    loading_precision: float = 1.0

    def map(self, fn) -> BaseMeasure:
        """Apply ``fn`` to every tensor (``mean, mean_precision, dof, scale``), keeping the rest."""
        return replace(self, **{f: fn(getattr(self, f)) for f in ("mean", "mean_precision", "dof", "scale")})

    @property
    def num_features(self) -> int:
        return self.mean.shape[-1]

    @property
    def scale_tril(self) -> Tensor:
        """Cholesky factor of ``Psi`` ``(B, D, D)`` (full covariance only)."""
        return torch.linalg.cholesky(self.scale)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        return self.map(lambda t: t.to(dtype=dtype, device=device))


def empirical_base_measure(
    data: Tensor | PointSource,
    covariance: str = "full",
    mean: Tensor | float | None = None,
    mean_precision: float | None = None,
    dof: float | None = None,
    scale: Tensor | float | None = None,
    reg_covar: float = 1e-6,
    singular_ridge: float = 1e-3,
    group=None,
    rank: int | None = None,
    loading_precision: float | None = None,
    moments: tuple[Tensor, Tensor] | None = None,
) -> BaseMeasure:
    """Empirical-Bayes hyperparameters from ``data`` of shape ``(B, N, D)`` (or ``(N, D)``), a
    tensor, array or :class:`~dpmodels.data.PointSource` (read in chunks). Returned on the CPU.

    Any of ``mean``, ``mean_precision``, ``dof``, ``scale`` can be given to override the
    data-driven default; scalars broadcast. ``scale`` is ``Psi`` (a covariance-like matrix).
    When the empirical covariance is singular (see :func:`singular_fits`), the default ``Psi``
    carries a ridge of ``singular_ridge`` times its mean variance instead of ``reg_covar``.
    With ``group`` (a :class:`~dpmodels.distributed.DataParallel`) the moments are those of all
    ranks' points together. ``mean_precision`` defaults to 1, and to ``1 / D`` for low-rank
    components, whose mean prior ``N(mean, 1 / (mean_precision lambda_d))`` is relative to the
    noise precision ``lambda_d`` only (not to the whole covariance, factors included, as for the
    full type): with 1 it holds every cluster centre within about one noise width of the data mean,
    and VB then moves the means against the factors' offset for a hundred iterations or more (9-13
    iterations instead of 65-153 on planted factor analysers, D = 16, with a higher bound). ``rank``
    (``1 <= rank < D``) and ``loading_precision`` (``> 0``; default ``1 / D``): low-rank components
    only. With the default, a loading's prior variance,
    ``1 / (loading_precision lambda_d)``, is about the feature's variance in the data (the prior
    noise variance ``Psi0_d / dof0`` is about ``1 / D`` of it), so the prior does not shrink factors
    the data support; a stronger prior (e.g. 1) makes VB trade loading scale against factor scale
    for hundreds of slow iterations.

    ``moments``: the data's float64 mean ``(B, D)`` and covariance ``(B, D, D)`` (full) or
    variances ``(B, D)`` (otherwise), when the caller has them: no pass over ``data`` then.
    """
    if covariance not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance must be one of {COVARIANCE_TYPES}, got {covariance!r}; "
            "try 'diag' for many features (D > 64) or 'full' otherwise."
        )
    source = data if isinstance(data, PointSource) else PointSource(data)
    B, N, D = source.shape
    if loading_precision is None:
        loading_precision = 1.0 / D
    if covariance == "lowrank":
        check_rank(rank, D)
        if not float(loading_precision) > 0:
            raise ValueError(f"loading_precision must be > 0, got {loading_precision!r}; try 1.0.")
    data_mean, emp = moments or source.moments(
        "full" if covariance == "full" else "diag", group=group
    )  # float64 (B, D), (B, D, D) or (B, D)
    if dof is None:
        dof = float(D)
    if dof <= D - 1:
        raise ValueError(f"dof must exceed D - 1 = {D - 1}, got {dof}; try dof={D}.")
    if mean_precision is None:  # low-rank: the mean's prior is relative to the noise precision alone
        mean_precision = 1.0 / D if covariance == "lowrank" else 1.0
    if mean_precision <= 0:
        raise ValueError(f"mean_precision must be > 0, got {mean_precision}; try 1.0.")
    m0 = data_mean if mean is None else torch.as_tensor(mean, dtype=torch.float64).expand(B, D)
    if covariance == "full":
        if scale is None:
            mean_var = emp.diagonal(dim1=-2, dim2=-1).mean(-1)  # (B,)
            ridge = reg_covar * (1.0 + mean_var)
            ridge = torch.where(singular_fits(emp), torch.maximum(ridge, singular_ridge * mean_var), ridge)
            psi = emp + ridge[:, None, None] * torch.eye(D, dtype=torch.float64)
        else:
            psi = _as_matrix(scale, B, D)
    else:
        if scale is None:
            psi = emp + reg_covar * (1.0 + emp.mean(-1, keepdim=True))
        else:
            psi = torch.as_tensor(scale, dtype=torch.float64).expand(B, D).clone()
            if not (psi > 0).all():
                raise ValueError(f"scale must be positive for covariance={covariance!r}.")
    dtype = source.dtype
    return BaseMeasure(
        covariance=covariance,
        mean=m0.to(dtype),
        mean_precision=torch.full((B,), float(mean_precision), dtype=dtype),
        dof=torch.full((B,), float(dof), dtype=dtype),
        scale=psi.to(dtype),
        rank=int(rank) if covariance == "lowrank" else 0,
        loading_precision=float(loading_precision),
    )


def check_rank(rank, num_features: int) -> None:
    """One clear error unless ``rank`` is an integer with ``1 <= rank < num_features``."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 1 <= rank < num_features:
        raise ValueError(
            f"covariance='lowrank' needs an integer rank with 1 <= rank < D = {num_features} (the number "
            f"of features), got rank={rank!r}; try rank={max(1, min(16, num_features - 1))}, or "
            "covariance='full' when the data have few features."
        )


def singular_fits(cov: Tensor, rtol: float = 1e-7) -> Tensor:
    """Which covariances ``(B, D, D)`` (float64) are numerically singular ``(B,)``: a constant
    feature, or a correlation matrix whose smallest eigenvalue is below ``rtol`` (linearly
    dependent features; float32 data carry about 1e-7 of relative noise)."""
    var = cov.diagonal(dim1=-2, dim2=-1)  # (B, D)
    constant = (var <= 1e-12 * var.amax(-1, keepdim=True).clamp_min(1e-300)).any(-1)
    sd = var.clamp_min(1e-300).sqrt()
    corr = cov / (sd.unsqueeze(-1) * sd.unsqueeze(-2))
    return constant | (torch.linalg.eigvalsh(corr)[..., 0] < rtol)


def _as_matrix(scale: Tensor | float, B: int, D: int) -> Tensor:
    s = torch.as_tensor(scale, dtype=torch.float64)
    if s.dim() == 0:
        s = s * torch.eye(D, dtype=torch.float64)
    s = s.expand(B, D, D).clone()
    try:
        torch.linalg.cholesky(s)
    except RuntimeError as err:
        raise ValueError(
            "scale must be a symmetric positive-definite (D, D) matrix for covariance='full'."
        ) from err
    return s
