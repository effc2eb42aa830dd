"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari, Gelman 2018) of the sampler.

Draw ``theta ~ p(theta)`` and data ``X ~ p(X | theta)`` from :func:`dpgmm_model` itself (many
replications at once, as the model's ``fits`` batch), run the Gibbs sampler on each data set (one
chain per replication, vectorised), and record the rank of each true statistic among ``L`` thinned
posterior draws. For a correct sampler the ranks are uniform on ``0..L``; a chi-square test on
binned ranks turns that into a p-value. Statistics are label-invariant (or well identified with
``K = 1``), so no relabelling is needed.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from scipy.stats import chisquare
from tqdm.auto import tqdm

from ..models.base_measure import BaseMeasure
from ..models.dpgmm import ModelSpec, dpgmm_model
from ..priors import WeightPrior, log_stick_breaking
from .draws import refuse_lowrank, single_threaded
from .gibbs import GibbsKernel

__all__ = ["sbc_ranks", "rank_uniformity_pvalue", "sbc_statistics"]


def sbc_statistics(log_w: torch.Tensor, means: torch.Tensor, prec: torch.Tensor, covariance: str) -> dict:
    """Label-invariant scalars of states ``(R, K, ...)``: largest weight, weight entropy, the mixture
    mean of feature 0 (``sum_k w_k mu_k0``), and for ``K = 1`` the mean and log precision of feature 0."""
    w = log_w.exp()
    out = {
        "largest_weight": w.max(-1).values,
        "weight_entropy": -(w * log_w.clamp_min(-700.0)).sum(-1),
        "mixture_mean": (w * means[..., 0]).sum(-1),
    }
    if log_w.shape[-1] == 1:
        lam = prec[:, 0, 0, 0] if covariance == "full" else prec[:, 0, 0]
        out = {"mean_0": means[:, 0, 0], "log_precision_00": torch.log(lam)}
    return out


def _simulate(prior: WeightPrior, base: BaseMeasure, K: int, N: int, R: int) -> tuple[dict, torch.Tensor]:
    """``R`` draws of ``(theta, X)`` from the model: statistics ``(R,)`` and data ``(R, N, D)``."""

    def rep(t):
        return t.to(torch.float64).expand((R,) + t.shape[1:]).contiguous()

    spec = ModelSpec(
        prior,
        BaseMeasure(base.covariance, *map(rep, (base.mean, base.mean_precision, base.dof, base.scale))),
        K,
    )
    tr = poutine.trace(dpgmm_model).get_trace(None, spec, num_points=N)
    nodes = tr.nodes
    if "sticks" in nodes:
        v = nodes["sticks"]["value"]  # (R, K-1)
        log_w = log_stick_breaking(torch.log(v), torch.log1p(-v))
    elif "weights" in nodes:
        log_w = torch.log(nodes["weights"]["value"].squeeze(-2))
    else:
        log_w = torch.zeros(R, 1, dtype=torch.float64)
    stats = sbc_statistics(log_w, nodes["mean"]["value"], nodes["precision"]["value"], base.covariance)
    return stats, nodes["_RETURN"]["value"]


def sbc_ranks(
    prior: WeightPrior,
    base: BaseMeasure,
    truncation: int,
    num_points: int,
    replications: int = 150,
    num_draws: int = 19,
    thin: int = 5,
    warmup: int = 100,
    seed: int = 0,
    kernel_cls: type[GibbsKernel] = GibbsKernel,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Ranks ``(replications,)`` in ``0..num_draws`` of each statistic of :func:`sbc_statistics`.

    ``base`` is a fixed ``B = 1`` base measure (SBC needs a prior that does not look at the data).
    ``kernel_cls`` lets a modified sampler be calibrated (e.g. to show that a broken one fails).
    """
    refuse_lowrank(
        base.covariance, "sbc_ranks", "it calibrates the Gibbs sampler, which has no low-rank kernel"
    )
    R, K = replications, truncation
    with torch.random.fork_rng(devices=[]), torch.no_grad(), single_threaded():
        torch.manual_seed(seed)
        pyro.set_rng_seed(seed)
        truth, x = _simulate(prior, base, K, num_points, R)  # x (R, N, D)
        kernel = kernel_cls(x, prior, base.to(dtype=torch.float64), K)
        z = torch.zeros(R, num_points, dtype=torch.long)
        alpha = torch.full((R,), float(prior.concentration), dtype=torch.float64)
        below = {name: torch.zeros(R, dtype=torch.long) for name in truth}
        total = warmup + num_draws * thin
        for it in tqdm(range(total), disable=not progress, desc="sbc", leave=False):
            log_w, log1m_v = kernel.weights(z, alpha)
            means, prec, _ = kernel.components(z)
            alpha = kernel.concentration(log1m_v, alpha)
            if it >= warmup and (it - warmup) % thin == thin - 1:
                for name, value in sbc_statistics(log_w, means, prec, base.covariance).items():
                    below[name] += (value < truth[name]).long()
            z = kernel.assignments(log_w, means, prec)
    return {name: r.numpy() for name, r in below.items()}


def rank_uniformity_pvalue(ranks: np.ndarray, num_draws: int, bins: int = 10) -> float:
    """Chi-square p-value that ``ranks`` in ``0..num_draws`` are uniform, in ``bins`` equal bins
    (``num_draws + 1`` must be divisible by ``bins``)."""
    if (num_draws + 1) % bins:
        raise ValueError(
            f"num_draws + 1 = {num_draws + 1} must be divisible by bins = {bins}; try num_draws=19."
        )
    counts = np.bincount(np.asarray(ranks) * bins // (num_draws + 1), minlength=bins)
    return float(chisquare(counts).pvalue)
