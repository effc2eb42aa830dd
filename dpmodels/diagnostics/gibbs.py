"""A reference sampler: blocked Gibbs (Ishwaran & James 2001) for the truncated mixture model.

It targets exactly :func:`~dpmodels.models.dpgmm.dpgmm_model` (same weight prior, truncation and
Normal–Wishart / Normal–Gamma base measure), so its draws are a ground truth for the variational
posterior. One sweep, for ``C`` chains at once in float64:

* ``z_n | theta ~ Categorical(w_k N(x_n | mu_k, Lambda_k^-1))``;
* the weights from the prior's conjugate conditional (:meth:`WeightPrior.sample_conditional
  <dpmodels.priors.WeightPrior.sample_conditional>`), e.g. sticks ``v_k | z ~ Beta(a_k + n_k,
  b_k + n_{>k})`` (DP: ``a_k = 1, b_k = alpha``), or ``pi | z ~ Dirichlet(alpha / K + n_k)``;
* ``(mu_k, Lambda_k) | z``: the conjugate Normal–Wishart (Normal–Gamma) posterior;
* ``alpha | v ~ Gamma(a + K - 1, b - sum_k log(1 - v_k))`` when learned (priors with a conjugate
  concentration: the DP).

Draws are relabelled per draw to a pivot (Hungarian matching), so component-wise summaries and
R-hat are meaningful; the label-invariant quantities need no relabelling.
Low-rank components (``covariance="lowrank"``, factor analysers) have no sampler here: refused
with a ``ValueError`` that points to the variational draws.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._validation import as_points, check_positive_int
from ..estimator import DPGMM
from ..models.base_measure import BaseMeasure, empirical_base_measure
from ..priors import WeightPrior, make_prior
from ._arviz import az
from .build import build_inference_data
from .draws import (
    _component_log_density,
    match_components,
    permute_components,
    refuse_lowrank,
    single_threaded,
)

__all__ = ["gibbs_sample", "gibbs_like", "GibbsKernel"]

# why low-rank components have no Gibbs reference here
_WHY = (
    "a mixture of factor analysers needs the factors as further latent variables and a conditional "
    "for the loadings, which this conjugate Normal-Wishart/Normal-Gamma sampler does not have"
)


class GibbsKernel:
    """One blocked-Gibbs sweep for ``C`` chains on ``x (N, D)`` (shared) or ``x (C, N, D)`` (one data
    set per chain, as in simulation-based calibration); state tensors are ``(C, ...)``."""

    def __init__(self, x: Tensor, prior: WeightPrior, base: BaseMeasure, truncation: int):
        refuse_lowrank(base.covariance, "the Gibbs sampler", _WHY)
        prior.require_closed_form(
            "the Gibbs sampler updates a learned concentration",
            "fix the concentration (learn_concentration=False) for this prior.",
        )
        f64 = torch.float64
        self.x, self.prior, self.K, self.cov = x.to(f64), prior, truncation, base.covariance
        self.m0 = base.mean[0].to(f64)  # (D,)
        self.beta0, self.nu0 = float(base.mean_precision[0]), float(base.dof[0])
        self.psi0 = base.scale[0].to(f64)  # (D, D) or (D,)
        x = self.x if self.x.dim() == 3 else self.x.unsqueeze(0)  # (C | 1, N, D)
        self.phi = (
            x.unsqueeze(-1) * x.unsqueeze(-2) if self.cov == "full" else x * x
        )  # (., N, D, D) | (., N, D)

    def assignments(self, log_w: Tensor, means: Tensor, prec: Tensor) -> Tensor:
        """``z (C, N)`` drawn from its full conditional."""
        logits = log_w.unsqueeze(1) + _component_log_density(self.x, means, prec, self.cov)  # (C, N, K)
        gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp_min(1e-300)))
        return (logits + gumbel).argmax(-1)

    def weights(self, z: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor | None]:
        """``log pi (C, K)`` given ``z``, and ``log(1 - v) (C, K-1)`` for the concentration step."""
        n = torch.nn.functional.one_hot(z, self.K).sum(1).to(torch.float64)  # (C, K)
        return self.prior.sample_conditional(n, alpha)

    def components(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(means (C, K, D), precisions, covariances)`` from the conjugate posterior given ``z``."""
        R = torch.nn.functional.one_hot(z, self.K).to(torch.float64)  # (C, N, K)
        n = R.sum(1)  # (C, K)
        sums = R.transpose(1, 2) @ self.x  # (C, K, D)
        xbar = sums / n.clamp_min(1.0).unsqueeze(-1)
        beta_n, nu_n = self.beta0 + n, self.nu0 + n
        m_n = (self.beta0 * self.m0 + sums) / beta_n.unsqueeze(-1)  # (C, K, D)
        dev = xbar - self.m0
        shrink = (self.beta0 * n / beta_n).unsqueeze(-1)  # (C, K, 1)
        if self.cov == "full":
            D = self.x.shape[-1]
            second = torch.einsum(
                "cnk,cnde->ckde", R, self.phi.expand(R.shape[0], -1, -1, -1)
            )  # (C, K, D, D) sum of x x^T
            scatter = second - n[..., None, None] * xbar.unsqueeze(-1) * xbar.unsqueeze(-2)
            psi_n = self.psi0 + scatter + shrink.unsqueeze(-1) * dev.unsqueeze(-1) * dev.unsqueeze(-2)
            psi_n = 0.5 * (psi_n + psi_n.transpose(-1, -2))
            chol_v = torch.linalg.cholesky(
                torch.cholesky_inverse(torch.linalg.cholesky(psi_n))
            )  # chol Psi^-1
            df = nu_n.unsqueeze(-1) - torch.arange(D, dtype=torch.float64)  # (C, K, D)
            diag = torch.sqrt(2.0 * torch._standard_gamma(0.5 * df))  # sqrt of chi2(nu - i) draws
            A = torch.randn_like(psi_n).tril(-1) + torch.diag_embed(diag)  # Bartlett factor
            T = chol_v @ A  # (C, K, D, D): Lambda = T T^T
            prec, cov = T @ T.transpose(-1, -2), torch.cholesky_inverse(T)
            eps = torch.randn_like(m_n).unsqueeze(-1)
            noise = torch.linalg.solve_triangular(T.transpose(-1, -2), eps, upper=True).squeeze(-1)
            return m_n + noise / beta_n.sqrt().unsqueeze(-1), prec, cov
        scatter = R.transpose(1, 2) @ self.phi - n.unsqueeze(-1) * xbar**2  # (C, K, D)
        rate = 0.5 * (self.psi0 + scatter.clamp_min(0.0) + shrink * dev**2)
        prec = torch._standard_gamma(0.5 * nu_n.unsqueeze(-1).expand_as(rate)) / rate  # (C, K, D)
        means = m_n + torch.randn_like(m_n) / torch.sqrt(beta_n.unsqueeze(-1) * prec)
        return means, prec, 1.0 / prec

    def concentration(self, log1m_v: Tensor | None, alpha: Tensor) -> Tensor:
        """``alpha (C,)`` from its full conditional given the sticks (unchanged when fixed)."""
        return self.prior.sample_concentration(log1m_v, alpha, self.K)


def _init_assignments(x: Tensor, C: int, K: int, init_components: int, gen: np.random.Generator) -> Tensor:
    """Per chain, ``init_components`` centres by k-means++ seeding (each next centre a data point
    drawn with probability proportional to its squared standardised distance to the nearest
    centre so far); every point starts in its nearest centre's component."""
    sd = x.std(0).clamp_min(1e-12)
    xs = (x / sd).numpy()
    zs = []
    for _ in range(C):
        centres = [xs[gen.integers(x.shape[0])]]
        for _ in range(min(init_components, K, x.shape[0]) - 1):
            d2 = ((xs[:, None] - np.stack(centres)[None]) ** 2).sum(-1).min(1)  # (N,)
            centres.append(xs[gen.choice(x.shape[0], p=d2 / d2.sum())] if d2.sum() > 0 else xs[0])
        dist = ((xs[:, None] - np.stack(centres)[None]) ** 2).sum(-1)  # (N, k0)
        zs.append(torch.as_tensor(dist.argmin(1)))
    return torch.stack(zs)


def _relabel(draws: dict[str, np.ndarray], scale: np.ndarray) -> None:
    """Per-draw Hungarian relabelling to a pivot: chain 0's last draw, then twice the mean of chain
    0's relabelled draws (so the pivot is a typical state, not one noisy draw)."""
    w, m = draws["weights"], draws["means"]  # (C, S, K), (C, S, K, D)
    ref_w, ref_m = w[0, -1], m[0, -1]
    for _ in range(2):
        perm = match_components(ref_m, ref_w, m, w, scale)  # (C, S, K)
        w, m = permute_components(w, perm, 2), permute_components(m, perm, 2)
        ref_w, ref_m = w[0].mean(0), m[0].mean(0)
    perm = match_components(ref_m, ref_w, draws["means"], draws["weights"], scale)
    for key in ("weights", "means", "precisions", "covariances"):
        draws[key] = permute_components(draws[key], perm, 2)


def gibbs_sample(
    X,
    *,
    truncation: int = 30,
    prior: str | WeightPrior = "dp",
    concentration: float = 1.0,
    discount: float = 0.0,
    learn_concentration: bool = False,
    covariance: str = "full",
    base: BaseMeasure | None = None,
    num_chains: int = 4,
    num_samples: int = 500,
    warmup: int = 500,
    thin: int = 1,
    init_components: int = 1,
    seed: int = 0,
    active_threshold: float = 0.01,
    max_points: int | None = 5000,
    posterior_predictive: bool = False,
    progress: bool = False,
) -> az.InferenceData:
    """Blocked Gibbs draws of the truncated mixture posterior for ``X (N, D)``, as ``InferenceData``
    laid out like :func:`~dpmodels.diagnostics.to_inference_data` (plus ``sample_stats.n_occupied``).

    ``base`` defaults to the empirical base measure DPGMM uses. Chains start from
    ``init_components`` k-means++ centres (random, different per chain); blocked Gibbs merges and
    splits clusters slowly, so a chain started far from the posterior's cluster count may stay
    there: compare chains with R-hat (``summarize``). Seeded and
    deterministic on CPU; the caller's global torch RNG is left untouched.
    """
    refuse_lowrank(covariance if base is None else base.covariance, "gibbs_sample", _WHY)
    x = as_points(X, dtype=torch.float64)
    for value, name in ((num_chains, "num_chains"), (num_samples, "num_samples"), (thin, "thin")):
        check_positive_int(value, name, "pass a positive integer")
    check_positive_int(init_components, "init_components", "try 1 (all points in one component)")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}; try 500.")
    wp = (
        prior
        if isinstance(prior, WeightPrior)
        else make_prior(
            prior, concentration=concentration, discount=discount, learn_concentration=learn_concentration
        )
    )
    if base is None:
        base = empirical_base_measure(x, covariance)
    if base.num_features != x.shape[1] or base.mean.shape[0] != 1:
        raise ValueError(
            f"base must describe one fit (B = 1) with D = {x.shape[1]}, got {tuple(base.mean.shape)}."
        )
    C, K, N = num_chains, truncation, x.shape[0]
    kernel = GibbsKernel(x, wp, base, truncation)
    gen = np.random.default_rng(seed)
    keep: dict[str, list] = {k: [] for k in ("log_w", "means", "prec", "cov", "alpha", "occupied")}
    with torch.random.fork_rng(devices=[]), torch.no_grad(), single_threaded():
        torch.manual_seed(seed)
        z = _init_assignments(x, C, K, init_components, gen)
        alpha = torch.full((C,), float(wp.concentration), dtype=torch.float64)
        total = warmup + num_samples * thin
        for it in tqdm(range(total), disable=not progress, desc="gibbs", leave=False):
            log_w, log1m_v = kernel.weights(z, alpha)
            means, prec, cov = kernel.components(z)
            alpha = kernel.concentration(log1m_v, alpha)
            if it >= warmup and (it - warmup) % thin == 0:
                occupied = (torch.nn.functional.one_hot(z, K).sum(1) > 0).sum(-1)
                for key, val in zip(keep, (log_w, means, prec, cov, alpha, occupied), strict=True):
                    keep[key].append(val.clone())
            z = kernel.assignments(log_w, means, prec)
    stacked = {k: torch.stack(v, 1).numpy() for k, v in keep.items()}  # (C, S, ...)
    draws = {
        "weights": np.exp(stacked["log_w"]),
        "means": stacked["means"],
        "precisions": stacked["prec"],
        "covariances": stacked["cov"],
    }
    if wp.learn_concentration:
        draws["concentration"] = stacked["alpha"]
    psi = base.scale[0].double().numpy()
    _relabel(draws, np.sqrt(np.diag(psi) if psi.ndim == 2 else psi))
    index = np.arange(N)
    if max_points is not None and N > max_points:
        index = np.sort(gen.choice(N, max_points, replace=False))
    attrs = {
        "prior": wp.kind,
        **wp.settings(),
        "truncation": K,
        "covariance": base.covariance,
        "active_threshold": active_threshold,
        "num_points": N,
        "engine": "gibbs",
        "source": "gibbs",
        "seed": seed,
        "warmup": warmup,
        "thin": thin,
        "log_likelihood_data": "fitted",
        "num_scored_points": len(index),
    }
    return build_inference_data(
        draws,
        base.covariance,
        attrs,
        active_threshold=active_threshold,
        observed=x.numpy()[index],
        point_index=index,
        posterior_predictive=posterior_predictive,
        sample_stats={"n_occupied": stacked["occupied"]},
        rng=gen,
    )


def gibbs_like(fit: DPGMM, X, **kwargs) -> az.InferenceData:
    """Gibbs draws for the same model as a fitted ``DPGMM`` (its weight prior, truncation, exact base
    measure and active threshold); ``kwargs`` go to :func:`gibbs_sample` (chains, samples, ...).
    Chains start from ``init_components = fit.n_active_`` random k-means++ centres unless given:
    blocked Gibbs splits and merges clusters slowly, so starting at the right count in random
    places is what makes its draws a usable reference (R-hat across chains still checks it)."""
    if not hasattr(fit, "posterior_"):
        from .._validation import NotFittedError

        raise NotFittedError("this DPGMM is not fitted yet; call fit(X) before gibbs_like.")
    spec = fit.posterior_.spec
    refuse_lowrank(spec.base.covariance, "gibbs_like", _WHY)
    kwargs.setdefault("init_components", max(1, fit.n_active_))
    return gibbs_sample(
        X,
        truncation=spec.truncation,
        prior=spec.prior,
        base=spec.base.to(dtype=torch.float64, device="cpu"),
        active_threshold=fit.active_threshold,
        **kwargs,
    )
