"""Priors on the mixture weights of a truncated mixture: one object per prior, owning its math.

Four priors are registered in :data:`PRIORS` (build one with :func:`make_prior`):

* ``"dp"`` — :class:`DirichletProcess`, stick breaking with ``v_k ~ Beta(1, alpha)``;
* ``"pitman_yor"`` — :class:`PitmanYor`, ``v_k ~ Beta(1 - d, alpha + k d)`` for ``k = 1..K-1``;
* ``"beta_sticks"`` — :class:`BetaStickBreaking`, ``v_k ~ Beta(a, alpha)`` with a constant ``a``
  (the two-parameter stick breaking of Ishwaran & James 2001; ``a = 1`` is the DP);
* ``"finite"`` — :class:`FiniteDirichlet`, ``pi ~ Dirichlet(alpha / K, ..., alpha / K)``.

The last stick of a truncation-``K`` stick-breaking prior is fixed to one, so the ``K`` weights sum
to one exactly. Optionally the concentration ``alpha`` gets a ``Gamma(shape, rate)`` hyperprior.

A prior object owns everything that depends on which prior it is: its parameters, prior draws and
means, the Pyro sample sites of the model and guide, the conjugate update of the weight factor of
the variational family from expected counts (the same formula is the Gibbs full conditional), the
weights' KL term of the ELBO, and whether a learned concentration has a closed-form update. The
variational weight factor is stored on :class:`~dpmodels.models.family.VariationalParams` as
``stick_a, stick_b (B, K-1)`` (stick breaking) or ``dirichlet (B, K)``, with ``conc_shape,
conc_rate (B,)`` when the concentration is learned.

All weight computations run in log space: ``log pi_k = log v_k + sum_{j<k} log(1 - v_j)`` stays
finite in float32 long after ``pi_k`` itself underflows (truncation 100 and beyond).
"""

from __future__ import annotations

import difflib
from dataclasses import KW_ONLY, MISSING, dataclass, fields
from typing import TYPE_CHECKING, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .models.family import VariationalParams

__all__ = [
    "PRIORS",
    "PRIOR_NAMES",
    "WeightPrior",
    "StickBreakingPrior",
    "DirichletProcess",
    "PitmanYor",
    "BetaStickBreaking",
    "FiniteDirichlet",
    "make_prior",
    "log_stick_breaking",
    "stick_breaking_weights",
    "log_sticks_from_gammas",
    "log_gamma_sample",
    "beta_expected_log_weights",
    "beta_expected_weights",
    "dirichlet_expected_log_weights",
    "dirichlet_expected_weights",
    "beta_kl",
    "dirichlet_kl",
    "gamma_kl",
]

# settings every prior has, in the order of its repr (the order of the original single class)
_COMMON = ("concentration", "discount", "learn_concentration", "concentration_shape", "concentration_rate")


class _LegacyCall(type):
    """``WeightPrior(kind, concentration, discount, ...)`` builds the registered subclass."""

    def __call__(cls, *args, **kwargs):
        if cls is WeightPrior:
            return _from_legacy(*args, **kwargs)
        return super().__call__(*args, **kwargs)


@dataclass(frozen=True, repr=False)
class WeightPrior(metaclass=_LegacyCall):
    """A prior on the weights of a mixture truncated at ``K`` components (the base class).

    ``WeightPrior(kind, concentration, discount, learn_concentration, ...)`` still works and
    returns the registered subclass for ``kind`` (see :func:`make_prior`).

    Parameters shared by every prior
    --------------------------------
    concentration : ``alpha > 0``; the starting value when learned.
    learn_concentration : put a ``Gamma(concentration_shape, concentration_rate)`` hyperprior on
        ``alpha`` and infer it.

    A subclass sets ``name`` (its registry key), ``ordered`` (the prior favours early components,
    so the engine may try components sorted by size) and ``conjugate_concentration`` (a learned
    ``alpha`` has a closed-form update), and implements the ``_``-prefixed hooks below; the two
    families :class:`StickBreakingPrior` and :class:`FiniteDirichlet` do most of it.
    """

    name: ClassVar[str] = ""
    ordered: ClassVar[bool] = False
    conjugate_concentration: ClassVar[bool] = False

    concentration: float = 1.0
    _: KW_ONLY
    learn_concentration: bool = False
    concentration_shape: float = 1.0
    concentration_rate: float = 1.0

    def __post_init__(self) -> None:
        if not self.concentration > 0:
            raise ValueError(
                f"concentration must be > 0, got {self.concentration!r}; "
                "try 1.0 (small values favour fewer clusters)."
            )
        if not (self.concentration_shape > 0 and self.concentration_rate > 0):
            raise ValueError(
                "the Gamma hyperprior on the concentration needs shape > 0 and rate > 0, got "
                f"shape={self.concentration_shape!r}, rate={self.concentration_rate!r}."
            )

    # ---- identity -------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """The registry name (``"dp"``, ...), for display and serialisation."""
        return self.name

    @property
    def discount(self) -> float:
        """The Pitman–Yor discount; 0 for every other prior (kept for display)."""
        return 0.0

    def settings(self) -> dict:
        """The settings by name (keywords of :func:`make_prior`): the shared ones, then the prior's own."""
        own = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**{k: getattr(self, k) for k in _COMMON}, **own}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"WeightPrior(kind={self.name!r}, {inner})"

    @property
    def closed_form(self) -> bool:
        """True when every factor has a closed-form (conjugate) update: always, unless the
        concentration is learned under a prior without a conjugate concentration update."""
        return not self.learn_concentration or self.conjugate_concentration

    def require_closed_form(self, what: str, remedy: str) -> None:
        """Raise ``ValueError("{what} only for prior=..., got prior=...; {remedy}")`` unless
        :attr:`closed_form`."""
        if not self.closed_form:
            names = " or ".join(repr(n) for n, c in PRIORS.items() if c.conjugate_concentration)
            raise ValueError(f"{what} only for prior={names}, got prior={self.name!r}; {remedy}")

    # ---- the prior ------------------------------------------------------------------------------
    def expected_weights(self, truncation: int) -> Tensor:
        """Closed-form prior mean ``E[pi_k]``, shape ``(K,)`` (at the fixed ``concentration``)."""
        raise NotImplementedError

    def sample_log_weights(self, truncation: int, sample_shape: tuple = ()) -> Tensor:
        """Draw ``log pi`` from the prior, shape ``sample_shape + (K,)``, computed in log space.

        Uses torch's global random state (seed it with ``torch.manual_seed``).
        """
        raise NotImplementedError

    # ---- Pyro sites -----------------------------------------------------------------------------
    def model_sites(self, truncation: int, ref: Tensor) -> Tensor:
        """Sample the weight sites of the model inside the ``fits`` plate (``concentration (B, 1)``
        when learned, then the prior's own sites); returns ``log pi`` ``(B, 1, K)``. ``ref`` gives
        dtype, device and the batch shape ``ref.shape[:-1] == (B,)``."""
        alpha = torch.tensor(self.concentration, dtype=ref.dtype, device=ref.device)
        if self.learn_concentration:
            shape = torch.tensor(self.concentration_shape, dtype=ref.dtype, device=ref.device)
            rate = torch.tensor(self.concentration_rate, dtype=ref.dtype, device=ref.device)
            alpha = pyro.sample("concentration", dist.Gamma(shape, rate))  # (B, 1)
        return self._model_weight_sites(truncation, alpha, ref)

    def guide_sites(self, params: VariationalParams) -> None:
        """Sample the guide's weight sites (same names as :meth:`model_sites`) inside ``fits``."""
        if params.conc_shape is not None:
            pyro.sample("concentration", dist.Gamma(params.conc_shape[:, None], params.conc_rate[:, None]))
        self._guide_weight_sites(params)

    # ---- the variational weight factor ----------------------------------------------------------
    def expected_concentration(self, params: VariationalParams | None, like: Tensor) -> Tensor:
        """``E[alpha]`` ``(B,)``: the mean of ``q(alpha)`` in ``params`` when learned, else the fixed
        value; dtype and device of ``like (B,)``."""
        if self.learn_concentration and params is not None and params.conc_shape is not None:
            return (params.conc_shape / params.conc_rate).to(like)
        return torch.full_like(like, self.concentration)

    def update(self, counts: Tensor, concentration: Tensor) -> dict[str, Tensor]:
        """Conjugate update of the weight factor from expected counts ``(B, K)`` at the
        concentration ``(B,)``, then of ``q(alpha)`` where it has a closed form. Returns the
        :class:`~dpmodels.models.family.VariationalParams` weight fields it sets."""
        weights = self.posterior_params(counts, concentration)
        if self.learn_concentration and self.conjugate_concentration:
            weights.update(self._concentration_update(weights))
        return weights

    def posterior_params(self, counts: Tensor, concentration: Tensor) -> dict[str, Tensor]:
        """Parameters of ``p(weights | z, alpha)`` given counts ``(B, K)`` and ``alpha (B,)``, as
        weight fields (``stick_a``/``stick_b`` or ``dirichlet``)."""
        raise NotImplementedError

    def weights_kl(self, params: VariationalParams) -> Tensor:
        """``E_q[log q(weights)] - E_q[log p(weights | alpha)]`` summed over components, ``(B,)``
        (with a learned concentration the expectation also runs over ``q(alpha)``)."""
        if not self.closed_form:
            raise NotImplementedError(
                f"no closed-form ELBO for a learned concentration under prior={self.name!r}; "
                "fit it with engine='pyro'."
            )
        return self._weights_kl(params)

    def concentration_kl(self, params: VariationalParams) -> Tensor:
        """``KL(q(alpha) || Gamma hyperprior)`` ``(B,)``; zero when alpha is fixed."""
        if params.conc_shape is None:
            return torch.zeros_like(params.mean_precision[:, 0])
        s0 = torch.full_like(params.conc_shape, self.concentration_shape)
        r0 = torch.full_like(params.conc_rate, self.concentration_rate)
        return gamma_kl(params.conc_shape, params.conc_rate, s0, r0)

    def start_concentration(self, like: Tensor) -> dict[str, Tensor]:
        """A starting ``q(alpha)`` (``conc_shape``, ``conc_rate`` like ``like (B,)``) with mean
        ``concentration`` when learned; empty when alpha is fixed."""
        if not self.learn_concentration:
            return {}
        shape = torch.full_like(like, self.concentration_shape)
        return {"conc_shape": shape, "conc_rate": shape / self.concentration}

    def sample_posterior_log_weights(self, params: VariationalParams, sample_shape: tuple) -> Tensor:
        """Draws of ``log pi`` from ``q(weights)``, ``sample_shape + (B, K)``."""
        return self._draw_log_weights(self._weight_fields(params), tuple(sample_shape))[0]

    # ---- blocked Gibbs --------------------------------------------------------------------------
    def sample_conditional(self, counts: Tensor, concentration: Tensor) -> tuple[Tensor, Tensor | None]:
        """A draw of ``log pi (C, K)`` from ``p(weights | z, alpha)`` given counts ``(C, K)``, and the
        statistic the concentration's full conditional needs (``log(1 - v) (C, K-1)`` or ``None``)."""
        return self._draw_log_weights(self.posterior_params(counts, concentration), ())

    def sample_concentration(
        self, statistic: Tensor | None, concentration: Tensor, truncation: int
    ) -> Tensor:
        """``alpha (C,)`` from its full conditional given :meth:`sample_conditional`'s statistic
        (unchanged when alpha is fixed)."""
        if not self.learn_concentration:
            return concentration
        shape, rate = self._concentration_conditional(statistic, truncation, concentration)
        return torch._standard_gamma(shape) / rate

    # ---- hooks of the families and priors -------------------------------------------------------
    def _model_weight_sites(self, truncation: int, alpha: Tensor, ref: Tensor) -> Tensor:
        raise NotImplementedError

    def _guide_weight_sites(self, params: VariationalParams) -> None:
        raise NotImplementedError

    def _weight_fields(self, params: VariationalParams) -> dict[str, Tensor]:
        raise NotImplementedError

    def _draw_log_weights(self, weights: dict[str, Tensor], shape: tuple) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def _weights_kl(self, params: VariationalParams) -> Tensor:
        raise NotImplementedError

    def _concentration_update(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _concentration_conditional(self, statistic, truncation: int, like: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


@dataclass(frozen=True, repr=False)
class StickBreakingPrior(WeightPrior):
    """Independent ``Beta(a_k, b_k)`` sticks, ``k = 1..K-1``: a subclass gives :meth:`stick_params`.

    Any such prior is conjugate to the counts: ``v_k | z ~ Beta(a_k + N_k, b_k + N_{>k})``.
    """

    ordered: ClassVar[bool] = True

    def stick_params(self, truncation: int, concentration: Tensor | float | None = None) -> tuple:
        """Beta parameters ``(a, b)`` of the ``K - 1`` free sticks, each shaped ``(..., K-1)``.

        ``concentration`` may be a tensor of shape ``(..., 1)`` (e.g. a sampled ``alpha``).
        """
        alpha, k = _stick_index(truncation, self.concentration if concentration is None else concentration)
        return self._sticks(alpha, k)

    def _sticks(self, alpha: Tensor | float, k: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` from ``alpha`` (float or ``(..., 1)``) and the 1-based index ``k (K-1,)``."""
        raise NotImplementedError

    def expected_weights(self, truncation: int) -> Tensor:
        a, b = self.stick_params(truncation)
        return beta_expected_weights(a.double(), b.double()).to(torch.get_default_dtype())

    def sample_log_weights(self, truncation: int, sample_shape: tuple = ()) -> Tensor:
        a, b = self.stick_params(truncation)
        shape = tuple(sample_shape) + (truncation - 1,)
        log_v, log1m_v = log_sticks_from_gammas(
            log_gamma_sample(a.expand(shape)), log_gamma_sample(b.expand(shape))
        )
        return log_stick_breaking(log_v, log1m_v)

    def _model_weight_sites(self, truncation: int, alpha: Tensor, ref: Tensor) -> Tensor:
        K = truncation
        if K == 1:
            return torch.zeros(ref.shape[:-1] + (1, 1), dtype=ref.dtype, device=ref.device)
        a, b = self.stick_params(K, alpha)
        with pyro.plate("breaks", K - 1, dim=-1):
            v = pyro.sample("sticks", dist.Beta(a.to(ref), b.to(ref)))  # (B, K-1)
        tiny = torch.finfo(ref.dtype).tiny
        log_pi = log_stick_breaking(torch.log(v.clamp_min(tiny)), torch.log1p(-v).clamp_min(-1e30))
        return log_pi.unsqueeze(-2)  # (B, 1, K)

    def _guide_weight_sites(self, params: VariationalParams) -> None:
        if params.truncation > 1:
            with pyro.plate("breaks", params.truncation - 1, dim=-1):
                pyro.sample("sticks", dist.Beta(params.stick_a, params.stick_b))

    def _weight_fields(self, params: VariationalParams) -> dict[str, Tensor]:
        return {"stick_a": params.stick_a, "stick_b": params.stick_b}

    def posterior_params(self, counts: Tensor, concentration: Tensor) -> dict[str, Tensor]:
        B, K = counts.shape
        if K == 1:
            return {"stick_a": counts.new_ones(B, 0), "stick_b": counts.new_ones(B, 0)}
        a0, b0 = self.stick_params(K, concentration.unsqueeze(-1))  # (B, K-1)
        tail = counts.flip(-1).cumsum(-1).flip(-1)[:, 1:]  # sum_{j > k} N_j, (B, K-1)
        return {"stick_a": a0 + counts[:, :-1], "stick_b": b0 + tail}

    def _draw_log_weights(self, weights: dict[str, Tensor], shape: tuple) -> tuple[Tensor, Tensor | None]:
        a, b = weights["stick_a"], weights["stick_b"]  # (B, K-1)
        if a.shape[-1] == 0:
            return torch.zeros(shape + a.shape[:-1] + (1,), dtype=a.dtype, device=a.device), None
        log_v, log1m_v = log_sticks_from_gammas(
            log_gamma_sample(a.expand(shape + a.shape)), log_gamma_sample(b.expand(shape + b.shape))
        )
        return log_stick_breaking(log_v, log1m_v), log1m_v

    def _weights_kl(self, params: VariationalParams) -> Tensor:
        a, b = params.stick_a, params.stick_b
        if params.conc_shape is None:
            a0, b0 = self.stick_params(params.truncation)
            return beta_kl(a, b, a0.to(a), b0.to(a)).sum(-1)
        return self._weights_kl_learned(a, b, params.conc_shape, params.conc_rate)

    def _weights_kl_learned(self, a: Tensor, b: Tensor, shape: Tensor, rate: Tensor) -> Tensor:
        raise NotImplementedError(f"closed-form ELBO for a learned concentration under prior={self.name!r}")


@dataclass(frozen=True, repr=False)
class DirichletProcess(StickBreakingPrior):
    """Truncated Dirichlet process: ``v_k ~ Beta(1, alpha)``. A learned concentration is conjugate:
    ``q(alpha) = Gamma(shape + K - 1, rate - sum_k E[log(1 - v_k)])``."""

    name: ClassVar[str] = "dp"
    conjugate_concentration: ClassVar[bool] = True

    def _sticks(self, alpha, k):
        b = alpha + torch.zeros_like(k)  # (..., K-1)
        return torch.ones_like(k).expand_as(b), b

    def _concentration_update(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        a, b = weights["stick_a"], weights["stick_b"]
        if a.shape[-1] == 0:  # K = 1: alpha does not enter the model
            return {}
        e_log_1mv = torch.digamma(b) - torch.digamma(a + b)  # (B, K-1)
        shape, rate = self._concentration_conditional(e_log_1mv, a.shape[-1] + 1, e_log_1mv[:, 0])
        return {"conc_shape": shape, "conc_rate": rate}

    def _concentration_conditional(self, log1m_v, truncation, like):
        shape = torch.full_like(like, self.concentration_shape + (truncation - 1))
        return shape, self.concentration_rate - (0.0 if log1m_v is None else log1m_v.sum(-1))

    def _weights_kl_learned(self, a, b, shape, rate):
        # log p(v | alpha) = log alpha + (alpha - 1) log(1 - v), in expectation over q(v) q(alpha)
        dg_ab = torch.digamma(a + b)
        e_log_1mv = torch.digamma(b) - dg_ab  # (B, K-1)
        e_log_v = torch.digamma(a) - dg_ab
        neg_entropy = -_log_beta_fn(a, b) + (a - 1) * e_log_v + (b - 1) * e_log_1mv
        e_alpha = shape / rate  # (B,)
        e_log_alpha = torch.digamma(shape) - torch.log(rate)
        e_log_prior = e_log_alpha.unsqueeze(-1) + (e_alpha.unsqueeze(-1) - 1) * e_log_1mv
        return (neg_entropy - e_log_prior).sum(-1)


@dataclass(frozen=True, repr=False)
class PitmanYor(StickBreakingPrior):
    """Pitman–Yor: ``v_k ~ Beta(1 - d, alpha + k d)``, power-law cluster sizes for ``d > 0``.

    discount : ``d`` in ``[0, 1)`` (``d = 0`` is the Dirichlet process).
    """

    name: ClassVar[str] = "pitman_yor"
    discount: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.discount < 1.0:
            raise ValueError(
                f"discount must lie in [0, 1), got {self.discount!r}; try 0.1 to 0.5 for Pitman–Yor."
            )

    def _sticks(self, alpha, k):
        d = self.discount
        b = alpha + k * d  # (..., K-1); a tensor alpha of shape (..., 1) broadcasts
        return torch.full_like(k, 1.0 - d).expand_as(b), b


@dataclass(frozen=True, repr=False)
class BetaStickBreaking(StickBreakingPrior):
    """Two-parameter stick breaking (Ishwaran & James 2001): every stick ``v_k ~ Beta(a, alpha)``.

    a : ``> 0``, the first Beta parameter of every stick (``a = 1`` is the Dirichlet process;
        ``a < 1`` favours small first sticks, spreading mass over more clusters).
    """

    name: ClassVar[str] = "beta_sticks"
    a: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.a > 0:
            raise ValueError(f"a must be > 0, got {self.a!r}; try 0.5 (a = 1 is the Dirichlet process).")

    def _sticks(self, alpha, k):
        b = alpha + torch.zeros_like(k)  # (..., K-1)
        return torch.full_like(k, self.a).expand_as(b), b


@dataclass(frozen=True, repr=False)
class FiniteDirichlet(WeightPrior):
    """Finite symmetric Dirichlet: ``pi ~ Dirichlet(alpha / K, ..., alpha / K)``."""

    name: ClassVar[str] = "finite"

    def dirichlet_params(self, truncation: int, concentration: Tensor | float | None = None) -> Tensor:
        """Symmetric Dirichlet parameters ``alpha / K``, shaped ``(..., K)``."""
        _check_truncation(truncation)
        alpha = self.concentration if concentration is None else concentration
        like = alpha if isinstance(alpha, Tensor) else torch.zeros(())  # a float alpha: default dtype
        ones = torch.ones(truncation, dtype=like.dtype, device=like.device)
        return alpha / truncation * ones

    def expected_weights(self, truncation: int) -> Tensor:
        return torch.full((truncation,), 1.0 / truncation)

    def sample_log_weights(self, truncation: int, sample_shape: tuple = ()) -> Tensor:
        conc = self.dirichlet_params(truncation).expand(tuple(sample_shape) + (truncation,))
        log_g = log_gamma_sample(conc)
        return log_g - torch.logsumexp(log_g, dim=-1, keepdim=True)

    def _model_weight_sites(self, truncation: int, alpha: Tensor, ref: Tensor) -> Tensor:
        conc = self.dirichlet_params(truncation, alpha.unsqueeze(-1))
        weights = pyro.sample("weights", dist.Dirichlet(conc))  # (B, 1, K)
        return torch.log(weights.clamp_min(torch.finfo(ref.dtype).tiny))

    def _guide_weight_sites(self, params: VariationalParams) -> None:
        pyro.sample("weights", dist.Dirichlet(params.dirichlet.unsqueeze(-2)))

    def _weight_fields(self, params: VariationalParams) -> dict[str, Tensor]:
        return {"dirichlet": params.dirichlet}

    def posterior_params(self, counts: Tensor, concentration: Tensor) -> dict[str, Tensor]:
        return {"dirichlet": self.dirichlet_params(counts.shape[-1], concentration.unsqueeze(-1)) + counts}

    def _draw_log_weights(self, weights: dict[str, Tensor], shape: tuple) -> tuple[Tensor, Tensor | None]:
        g = weights["dirichlet"]
        log_g = log_gamma_sample(g.expand(shape + g.shape))
        return log_g - torch.logsumexp(log_g, -1, keepdim=True), None

    def _weights_kl(self, params: VariationalParams) -> Tensor:
        g0 = self.dirichlet_params(params.truncation).to(params.dirichlet)
        return dirichlet_kl(params.dirichlet, g0.expand_as(params.dirichlet))


# The registry: name -> class. Adding a prior = one class above + its entry here.
PRIORS: dict[str, type[WeightPrior]] = {
    cls.name: cls for cls in (DirichletProcess, PitmanYor, FiniteDirichlet, BetaStickBreaking)
}
PRIOR_NAMES = tuple(PRIORS)


def make_prior(name: str, **settings) -> WeightPrior:
    """The weight prior registered as ``name`` with ``settings`` (keyword arguments of its class).

    A setting of another prior at its neutral default (e.g. ``discount=0``) is ignored, so callers
    may pass one flat set of settings; any other value raises ``ValueError`` saying which prior it
    belongs to.
    """
    cls = PRIORS.get(name) if isinstance(name, str) else None
    if cls is None:
        close = difflib.get_close_matches(str(name), PRIOR_NAMES, n=1)
        hint = f"did you mean prior={close[0]!r}?" if close else "try prior='dp' for a Dirichlet process."
        raise ValueError(f"prior must be one of {PRIOR_NAMES}, got {name!r}; {hint}")
    own = {f.name for f in fields(cls)}
    kept = {}
    for key, value in settings.items():
        if key in own:
            kept[key] = value
            continue
        owners = [n for n, c in PRIORS.items() if key in {f.name for f in fields(c)}]
        if not owners:
            known = sorted({f.name for c in PRIORS.values() for f in fields(c)})
            raise ValueError(f"unknown prior setting {key!r} for prior={name!r}; prior settings are {known}.")
        neutral = _default(PRIORS[owners[0]], key)
        if value != neutral:
            where = " or ".join(repr(o) for o in owners)
            raise ValueError(
                f"{key}={value} only applies to prior={where}, got prior={name!r}; "
                f"set {key}={neutral} or choose prior={owners[0]!r}."
            )
    return cls(**kept)


def _default(cls: type, key: str):
    field = next(f for f in fields(cls) if f.name == key)
    return field.default if field.default is not MISSING else field.default_factory()


def _from_legacy(
    kind: str = "dp",
    concentration: float = 1.0,
    discount: float = 0.0,
    learn_concentration: bool = False,
    concentration_shape: float = 1.0,
    concentration_rate: float = 1.0,
    **settings,
) -> WeightPrior:
    return make_prior(
        kind,
        concentration=concentration,
        discount=discount,
        learn_concentration=learn_concentration,
        concentration_shape=concentration_shape,
        concentration_rate=concentration_rate,
        **settings,
    )


def _check_truncation(truncation: int) -> None:
    if not isinstance(truncation, int) or isinstance(truncation, bool) or truncation < 1:
        raise ValueError(
            f"truncation must be an integer >= 1, got {truncation!r}; "
            "try 30 (a bound on the number of clusters, not a guess of it)."
        )


def _stick_index(truncation: int, alpha: Tensor | float) -> tuple[Tensor | float, Tensor]:
    """``(alpha, k)``: the 1-based stick index ``k (K-1,)`` in the dtype and device of ``alpha``."""
    _check_truncation(truncation)
    like = alpha if isinstance(alpha, Tensor) else torch.zeros(())
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return alpha, torch.arange(1, truncation, dtype=dtype, device=like.device)


# ---- log-space weight math ----------------------------------------------------------------------


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


# ---- KL divergences of the weight and concentration factors -------------------------------------


def _log_beta_fn(a: Tensor, b: Tensor) -> Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def beta_kl(a: Tensor, b: Tensor, a0: Tensor, b0: Tensor) -> Tensor:
    """``KL(Beta(a, b) || Beta(a0, b0))`` elementwise."""
    dg_ab = torch.digamma(a + b)
    return (
        _log_beta_fn(a0, b0)
        - _log_beta_fn(a, b)
        + (a - a0) * torch.digamma(a)
        + (b - b0) * torch.digamma(b)
        + (a0 - a + b0 - b) * dg_ab
    )


def dirichlet_kl(g: Tensor, g0: Tensor) -> Tensor:
    """``KL(Dirichlet(g) || Dirichlet(g0))`` over the last dim."""
    g_sum, g0_sum = g.sum(-1), g0.sum(-1)
    return (
        torch.lgamma(g_sum)
        - torch.lgamma(g).sum(-1)
        - torch.lgamma(g0_sum)
        + torch.lgamma(g0).sum(-1)
        + ((g - g0) * (torch.digamma(g) - torch.digamma(g_sum).unsqueeze(-1))).sum(-1)
    )


def gamma_kl(a: Tensor, b: Tensor, a0: Tensor, b0: Tensor) -> Tensor:
    """``KL(Gamma(a, b) || Gamma(a0, b0))`` elementwise (shape, rate)."""
    return (
        (a - a0) * torch.digamma(a)
        - torch.lgamma(a)
        + torch.lgamma(a0)
        + a0 * (torch.log(b) - torch.log(b0))
        + a * (b0 - b) / b
    )
