"""Priors on the mixture weights of a truncated mixture.

Three weight priors share one interface, :class:`WeightPrior`:

* ``"dp"`` — truncated Dirichlet process by stick breaking, ``v_k ~ Beta(1, alpha)``;
* ``"pitman_yor"`` — ``v_k ~ Beta(1 - d, alpha + k d)`` for ``k = 1..K-1`` (1-based);
* ``"finite"`` — symmetric Dirichlet, ``pi ~ Dirichlet(alpha / K, ..., alpha / K)``.

The last stick of a truncation-``K`` stick-breaking prior is fixed to one, so the ``K`` weights sum
to one exactly. Optionally the concentration ``alpha`` gets a ``Gamma(shape, rate)`` hyperprior.

All weight computations run in log space: ``log pi_k = log v_k + sum_{j<k} log(1 - v_j)`` stays
finite in float32 long after ``pi_k`` itself underflows (truncation 100 and beyond).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "PRIOR_NAMES",
    "WeightPrior",
    "log_stick_breaking",
    "stick_breaking_weights",
    "log_sticks_from_gammas",
    "log_gamma_sample",
    "beta_expected_log_weights",
    "beta_expected_weights",
    "dirichlet_expected_log_weights",
    "dirichlet_expected_weights",
]

PRIOR_NAMES = ("dp", "pitman_yor", "finite")


@dataclass(frozen=True)
class WeightPrior:
    """A prior on the weights of a mixture truncated at ``K`` components.

    Parameters
    ----------
    kind : ``"dp"``, ``"pitman_yor"`` or ``"finite"``.
    concentration : ``alpha > 0``. For ``"pitman_yor"`` it must exceed ``-discount``.
    discount : Pitman–Yor discount ``d`` in ``[0, 1)``; must be 0 for the other priors.
    learn_concentration : put a ``Gamma(concentration_shape, concentration_rate)`` hyperprior
        on ``alpha`` and infer it; ``concentration`` is then only the starting value.
    """

    kind: str = "dp"
    concentration: float = 1.0
    discount: float = 0.0
    learn_concentration: bool = False
    concentration_shape: float = 1.0
    concentration_rate: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in PRIOR_NAMES:
            raise ValueError(
                f"prior must be one of {PRIOR_NAMES}, got {self.kind!r}; "
                "try prior='dp' for a Dirichlet process."
            )
        if not self.concentration > 0:
            raise ValueError(
                f"concentration must be > 0, got {self.concentration!r}; "
                "try 1.0 (small values favour fewer clusters)."
            )
        if not 0.0 <= self.discount < 1.0:
            raise ValueError(
                f"discount must lie in [0, 1), got {self.discount!r}; try 0.1 to 0.5 for Pitman–Yor."
            )
        if self.discount > 0 and self.kind != "pitman_yor":
            raise ValueError(
                f"discount={self.discount} only applies to prior='pitman_yor', got prior={self.kind!r}; "
                "set discount=0 or choose prior='pitman_yor'."
            )
        if not (self.concentration_shape > 0 and self.concentration_rate > 0):
            raise ValueError(
                "the Gamma hyperprior on the concentration needs shape > 0 and rate > 0, got "
                f"shape={self.concentration_shape!r}, rate={self.concentration_rate!r}."
            )

    @property
    def uses_sticks(self) -> bool:
        """True for stick-breaking priors (DP, Pitman–Yor), False for the finite Dirichlet."""
        return self.kind != "finite"

    def stick_params(self, truncation: int, concentration: Tensor | float | None = None) -> tuple:
        """Beta parameters ``(a, b)`` of the ``K - 1`` free sticks, each shaped ``(..., K-1)``.

        ``concentration`` may be a tensor of shape ``(..., 1)`` (e.g. a sampled ``alpha``).
        """
        _check_truncation(truncation)
        alpha = self.concentration if concentration is None else concentration
        d = self.discount
        like = alpha if isinstance(alpha, Tensor) else torch.zeros(())
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        k = torch.arange(1, truncation, dtype=dtype, device=like.device)  # (K-1,) 1-based index
        a = torch.full_like(k, 1.0 - d)
        b = alpha + k * d  # (..., K-1); a tensor alpha of shape (..., 1) broadcasts
        return a.expand_as(b), b

    def dirichlet_params(self, truncation: int, concentration: Tensor | float | None = None) -> Tensor:
        """Symmetric Dirichlet parameters ``alpha / K``, shaped ``(..., K)``."""
        _check_truncation(truncation)
        alpha = self.concentration if concentration is None else concentration
        ones = torch.ones(truncation)
        return alpha / truncation * ones

    def expected_weights(self, truncation: int) -> Tensor:
        """Closed-form prior mean ``E[pi_k]``, shape ``(K,)`` (at the fixed ``concentration``)."""
        if not self.uses_sticks:
            return torch.full((truncation,), 1.0 / truncation)
        a, b = self.stick_params(truncation)
        return beta_expected_weights(a.double(), b.double()).to(torch.get_default_dtype())

    def sample_log_weights(self, truncation: int, sample_shape: tuple = ()) -> Tensor:
        """Draw ``log pi`` from the prior, shape ``sample_shape + (K,)``, computed in log space.

        Uses torch's global random state (seed it with ``torch.manual_seed``).
        """
        if self.uses_sticks:
            a, b = self.stick_params(truncation)
            shape = tuple(sample_shape) + (truncation - 1,)
            log_g1 = log_gamma_sample(a.expand(shape))
            log_g2 = log_gamma_sample(b.expand(shape))
            log_v, log1m_v = log_sticks_from_gammas(log_g1, log_g2)
            return log_stick_breaking(log_v, log1m_v)
        conc = self.dirichlet_params(truncation).expand(tuple(sample_shape) + (truncation,))
        log_g = log_gamma_sample(conc)
        return log_g - torch.logsumexp(log_g, dim=-1, keepdim=True)


def _check_truncation(truncation: int) -> None:
    if not isinstance(truncation, int) or isinstance(truncation, bool) or truncation < 1:
        raise ValueError(
            f"truncation must be an integer >= 1, got {truncation!r}; "
            "try 30 (a bound on the number of clusters, not a guess of it)."
        )


def log_gamma_sample(shape_param: Tensor) -> Tensor:
    """``log G`` for ``G ~ Gamma(shape_param, 1)``, accurate for tiny shapes.

    Uses ``G = G' * U^(1/a)`` with ``G' ~ Gamma(a + 1)``, so ``log G = log G' + log(U) / a`` never
    underflows even when ``G`` itself would be 0 in float32.
    """
    a = shape_param
    g = torch._standard_gamma(a + 1.0)
    u = torch.rand(a.shape, dtype=a.dtype, device=a.device).clamp_min(torch.finfo(a.dtype).tiny)
    return torch.log(g) + torch.log(u) / a


def log_sticks_from_gammas(log_g1: Tensor, log_g2: Tensor) -> tuple[Tensor, Tensor]:
    """``(log v, log(1 - v))`` for ``v = G1 / (G1 + G2)`` from log Gamma draws (Beta sampling)."""
    log_total = torch.logaddexp(log_g1, log_g2)
    return log_g1 - log_total, log_g2 - log_total


def log_stick_breaking(log_v: Tensor, log1m_v: Tensor) -> Tensor:
    """Log weights from ``K - 1`` sticks: ``(..., K-1) -> (..., K)``; the last stick is 1.

    ``log pi_k = log v_k + sum_{j<k} log(1 - v_j)`` and ``log pi_K = sum_{j<K} log(1 - v_j)``.
    """
    zero = log1m_v.new_zeros(log1m_v.shape[:-1] + (1,))
    log_remaining = torch.cat([zero, torch.cumsum(log1m_v, dim=-1)], dim=-1)  # (..., K)
    return torch.cat([log_v, zero], dim=-1) + log_remaining


def stick_breaking_weights(v: Tensor) -> Tensor:
    """Weights ``(..., K)`` from stick proportions ``v`` in ``(0, 1)``, shape ``(..., K-1)``."""
    return torch.exp(log_stick_breaking(torch.log(v), torch.log1p(-v)))


def beta_expected_log_weights(a: Tensor, b: Tensor) -> Tensor:
    """``E[log pi]`` ``(..., K)`` when the ``K - 1`` sticks are independent ``Beta(a, b)``."""
    dg_total = torch.digamma(a + b)
    return log_stick_breaking(torch.digamma(a) - dg_total, torch.digamma(b) - dg_total)


def beta_expected_weights(a: Tensor, b: Tensor) -> Tensor:
    """``E[pi]`` ``(..., K)`` for independent ``Beta(a, b)`` sticks: ``E[v_k] prod_{j<k} E[1-v_j]``."""
    log_total = torch.log(a + b)
    return torch.exp(log_stick_breaking(torch.log(a) - log_total, torch.log(b) - log_total))


def dirichlet_expected_log_weights(concentration: Tensor) -> Tensor:
    """``E[log pi]`` ``(..., K)`` under ``Dirichlet(concentration)``."""
    return torch.digamma(concentration) - torch.digamma(concentration.sum(-1, keepdim=True))


def dirichlet_expected_weights(concentration: Tensor) -> Tensor:
    """``E[pi]`` ``(..., K)`` under ``Dirichlet(concentration)``."""
    return concentration / concentration.sum(-1, keepdim=True)
