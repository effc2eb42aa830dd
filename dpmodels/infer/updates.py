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

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from ..models.base_measure import BaseMeasure
from ..models.diagonal import DiagPlan, diag_plan
from ..models.family import (
    LOG_2PI,
    VariationalParams,
    components_kl_terms,
    expected_log_det_precision,
    expected_log_weights,
    quadratic_plan,
    take_components,
)
from ..models.guide import assignment_log_probs
from ..models.lowrank import (
    factor_statistics,
    lowrank_component_update,
    lowrank_elbo_terms,
    pack_stats,
    pair_factor_statistics,
    scale_factor_stats,
    whiten_factor_stats,
)
from ..models.quadratic import QuadraticPlan, weighted_scatter
from ..priors import WeightPrior

__all__ = [
    "Stats",
    "e_step",
    "diag_e_step",
    "stats_from_responsibilities",
    "m_step",
    "component_update",
    "weight_update",
    "elbo_from_stats",
    "component_elbo_terms",
    "weight_elbo_terms",
    "select_fits",
    "lowrank_e_step",
    "best_factor_frame",
]


@dataclass
class Stats:
    """Expected sufficient statistics (float64): ``count (B, K)``, ``s1 (B, K, D)``,
    ``s2 (B, K, D, D)`` (full) or ``(B, K, D)`` (diag), assignment ``entropy (B,)``. Low-rank
    components pack theirs as :mod:`dpmodels.models.lowrank` states (``s1 (B, K, D, r+1)``,
    ``s2 (B, K, D + (r+1)^2)``; the entropy includes the factors')."""

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


def _blocked_sums(r: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``sum_n r_nk`` ``(B, K)`` and ``sum_n r_nk x_n`` ``(B, K, D)`` in float64.

    Sums run in float32 over blocks of at most ``STATS_BLOCK`` points and in float64 across
    blocks, so a long chunk does not lose the digits that the scatter ``S2 - S1 S1^T / N`` needs
    when clusters sit far from the centre. Blocks are views (no copies)."""
    B, n, K = r.shape
    full = (n // STATS_BLOCK) * STATS_BLOCK
    parts = [(0, full, STATS_BLOCK)] if full else []
    if n > full:
        parts.append((full, n, n - full))
    count = s1 = 0.0
    for start, stop, size in parts:
        nb = (stop - start) // size
        r_b = r[:, start:stop].reshape(B * nb, size, K).transpose(1, 2)  # (B nb, K, size)
        x_b = x[:, start:stop].reshape(B * nb, size, x.shape[-1])
        count = count + r_b.sum(-1).reshape(B, nb, K).double().sum(1)
        s1 = s1 + (r_b @ x_b).reshape(B, nb, K, -1).double().sum(1)
    return count, s1


def e_step(
    params: VariationalParams,
    x: Tensor,
    e_log_pi: Tensor | None = None,
    plan: QuadraticPlan | DiagPlan | None = None,
) -> tuple[Stats, Tensor]:
    """Responsibilities and statistics of a centred chunk ``x (B, n, D)``.

    ``plan`` (:func:`~dpmodels.models.family.quadratic_plan` of ``params``, built once per pass;
    for diagonal components :func:`~dpmodels.models.diagonal.diag_plan`) picks the form of the
    quadratic forms and of the scatter for the width ``D``; memory stays bounded as
    :mod:`dpmodels.models.quadratic` states. Diagonal components take :func:`diag_e_step`.
    Returns the chunk's :class:`Stats` (float64) and ``log r (B, n, K)``.
    """
    if params.covariance == "diag":
        if not isinstance(plan, DiagPlan):
            plan = diag_plan(params, x.dtype, x.device)
        return diag_e_step(plan, x, expected_log_weights(params) if e_log_pi is None else e_log_pi)
    plan = plan or quadratic_plan(params)
    if params.covariance == "lowrank":
        return lowrank_e_step(params, x, e_log_pi, plan)
    log_r = assignment_log_probs(params, x, e_log_pi, plan)  # (B, n, K)
    return stats_from_responsibilities(log_r, x, plan.form), log_r


def diag_e_step(plan: DiagPlan, x: Tensor, e_log_pi: Tensor, pairs: Tensor | None = None):
    """The E-step of diagonal components for a chunk ``x (B, n, D)`` (centred, or centred by the
    plan's ``offset``, :func:`~dpmodels.models.diagonal.diag_plan`): the features ``[xc^2, xc]``
    (``xc = x - offset``) give the expected log-densities (one matrix product,
    :class:`~dpmodels.models.diagonal.DiagPlan`) and, against the responsibilities of the
    components that hold weight in the chunk, the statistics (one more, in float64, batched over
    blocks of :data:`STATS_BLOCK` points), shifted back from ``centre`` in float64. Every
    step covers the whole chunk (few large operations: each costs a wait for all threads).

    Returns ``(stats, log r (B, n, K))``; with ``pairs (B, P, 2)`` also the merge terms of
    :func:`~dpmodels.infer.result.full_pass`, ``sum_n r_nk log r_nk`` ``(B, K)`` and ``sum_n (r_nj +
    r_nk) log(r_nj + r_nk)`` ``(B, P)`` (float64; components and pairs with no weight in the chunk
    are skipped, their terms are zero). Responsibilities below about the dtype's smallest normal
    number count as zero."""
    B, n, D = x.shape
    if n == 0:
        raise ValueError("an E-step needs at least one point; got an empty chunk.")
    K = plan.K
    feats = plan.features(x)  # (B, n, 2D)
    log_r = torch.log_softmax(plan.log_likelihood(feats) + e_log_pi.unsqueeze(1), dim=-1)  # (B, n, K)
    # exp is many times slower where its result is subnormal (and just above): those count as 0
    floor = math.log(torch.finfo(x.dtype).tiny) + 0.5
    small = log_r < floor
    r = log_r.clamp_min(floor).exp_().masked_fill_(small, 0.0)
    live = (r > 0).any(1).any(0).nonzero().flatten()  # components with weight in the chunk
    whole = len(live) == K
    r_l, lr_l = (r, log_r) if whole else (r[..., live], log_r[..., live])  # (B, n, L)
    # in float64: float32 block sums made fits depend on how the points were split (a minibatch fit
    # over two ranks took another number of steps than the same fit in one process)
    cnt, moments = _blocked_sums(r_l.double(), feats.double())  # (B, L), (B, L, 2D): sum r, r xc^2, r xc
    entropy = -torch.where(r_l > 0, r_l * lr_l, torch.zeros_like(r_l)).double().sum((1, 2))
    if not whole:
        count = cnt.new_zeros(B, K)
        count[:, live] = cnt
        full = moments.new_zeros(B, K, 2 * D)
        full[:, live] = moments
        cnt, moments = count, full
    c = plan.centre.double().unsqueeze(1)  # (B, 1, D)
    s2c, s1c = moments[..., :D], moments[..., D:]
    cn = cnt.unsqueeze(-1) * c  # (B, K, D)
    stats = Stats(cnt, s1c + cn, s2c + 2.0 * c * s1c + cn * c, entropy)
    if pairs is None:
        return stats, log_r
    f64 = dict(dtype=torch.float64, device=x.device)
    comp, pair = torch.zeros(B, K, **f64), torch.zeros(pairs.shape[:2], **f64)
    for start in range(0, n, MERGE_BLOCK):  # (B, MERGE_BLOCK, P) float64 temporaries at most
        _diag_merge_terms(lr_l[:, start : start + MERGE_BLOCK], live, K, pairs, comp, pair)
    return stats, log_r, comp, pair


MERGE_BLOCK = 8192


def _xlogx(r: Tensor) -> Tensor:
    return torch.where(r > 0, r * torch.log(r.clamp_min(1e-300)), torch.zeros_like(r))


def _diag_merge_terms(lr_l: Tensor, live: Tensor, K: int, pairs: Tensor, comp: Tensor, pair: Tensor) -> None:
    """Add a block's merge terms to ``comp (B, K)`` and ``pair (B, P)``, from ``log r`` of its live
    components ``lr_l (B, m, L)`` (``live (L,)``: their ids). ``r log r`` uses ``log r`` as it is
    (no second log); a pair's ``(r_j + r_k) log(r_j + r_k)`` is evaluated where one of the two is live."""
    B, m, L = lr_l.shape
    lr64 = lr_l.double()
    r64 = lr64.exp()
    part = torch.where(r64 > 0, r64 * lr64, torch.zeros_like(r64)).sum(1)  # (B, L)
    if L == K:
        comp += part
    else:
        comp[:, live] += part
    pos = torch.full((K,), L, dtype=torch.long, device=lr_l.device)  # dead components: a zero column
    pos[live] = torch.arange(L, device=lr_l.device)
    pj, pk = pos[pairs[..., 0]], pos[pairs[..., 1]]  # (B, P)
    cols = ((pj < L) | (pk < L)).any(0).nonzero().flatten()
    if len(cols) == 0:
        return
    r_ext = torch.cat([r64, r64.new_zeros(B, m, 1)], -1)  # (B, m, L + 1)
    pj, pk = pj[:, cols].unsqueeze(1).expand(B, m, -1), pk[:, cols].unsqueeze(1).expand(B, m, -1)
    both = torch.gather(r_ext, 2, pj) + torch.gather(r_ext, 2, pk)  # (B, m, P')
    pair[:, cols] += _xlogx(both).sum(1)


def lowrank_e_step(
    params: VariationalParams, x: Tensor, e_log_pi: Tensor | None, plan, pairs: Tensor | None = None
):
    """The E-step of low-rank components: responsibilities and the factors' posterior means come
    from one pass of the plan; statistics accumulate in float64 across blocks of points.

    With ``pairs (B, P, 2)`` also returns the factor statistics that merge candidates need
    (:func:`~dpmodels.models.lowrank.pair_factor_statistics`): ``(stats, log_r, pair_terms)``."""
    if e_log_pi is None:
        e_log_pi = expected_log_weights(params)
    parts, pair_parts, logs = None, None, []
    for start in range(0, x.shape[1], STATS_BLOCK):
        xb = x[:, start : start + STATS_BLOCK]
        loglik, ey = plan.factors_distinct(xb)  # equal components once: (B, m, U), (B, U, r, m)
        log_r = torch.log_softmax(e_log_pi.unsqueeze(1) + plan.expand(loglik, 2), dim=-1)  # (B, m, K)
        r = log_r.exp()
        count, sxy, sxx, syy, h_y = factor_statistics(plan, xb, r, ey, e_log_pi)
        h_z = -torch.where(r > 0, r * log_r, torch.zeros_like(r)).double().sum((1, 2))
        parts = _add_parts(parts, (count, sxy, sxx, syy, h_y + h_z))
        if pairs is not None:
            pair_parts = _add_parts(pair_parts, pair_factor_statistics(xb, r, ey, pairs, plan.index))
        logs.append(log_r)
    if parts is None:
        raise ValueError("an E-step needs at least one point; got an empty chunk.")
    count, sxy, sxx, syy, entropy = parts
    stats = Stats(count, *pack_stats(sxy, sxx, syy), entropy)
    if pairs is None:
        return stats, torch.cat(logs, 1)
    return stats, torch.cat(logs, 1), pair_parts


def _add_parts(total: tuple | None, part: tuple) -> tuple:
    return part if total is None else tuple(a + b for a, b in zip(total, part, strict=True))


def stats_from_responsibilities(log_r: Tensor, x: Tensor, form: str) -> Stats:
    """The :class:`Stats` of a centred chunk ``x (B, n, D)`` under given ``log r (B, n, K)`` (any
    normalised assignment distribution, e.g. a spatially coupled one); ``form``: the plan's form.

    Full covariances take their statistics from float64 copies of the chunk. The ELBO's trace term
    ``nu tr(Psi_k^-1 S_k)`` amplifies an error in the scatter ``S_k`` by ``Psi_k``'s smallest
    eigenvalue, which on dependent channels (a sum of others, probability rows) is the base
    measure's ridge: float32 products there gave ``S_k`` errors of about 1e-7 of its largest
    eigenvalue, ELBO noise of nats per step and fits that stopped only where the BLAS kernels'
    rounding happened to agree (issue: fits creeping on some CPUs). The responsibilities stay in the
    chunk's dtype (their error enters the bound at second order)."""
    r = log_r.exp()
    if form != "diag" and x.dtype != torch.float64:
        r, x = r.double(), x.double()
    count, s1 = _blocked_sums(r, x)
    s2 = weighted_scatter(r, x, form, STATS_BLOCK)  # (B, K, D, D) or (B, K, D)
    entropy = -torch.where(r > 0, r * log_r, torch.zeros_like(r)).double().sum((1, 2))  # (B,)
    return Stats(count, s1, s2, entropy)


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
    params = component_update(stats, base)
    n_k = stats.count.clamp_min(0.0)  # (B, K)
    weights = weight_update(n_k, prior, prior.expected_concentration(previous, n_k[:, 0]))
    return replace(params, **{k: getattr(weights, k) for k in _WEIGHT_FIELDS})


_WEIGHT_FIELDS = ("stick_a", "stick_b", "dirichlet", "conc_shape", "conc_rate")


def component_update(stats: Stats, base: BaseMeasure) -> VariationalParams:
    """The component factors ``q(mu_k, Lambda_k)`` from centred statistics (weights left unset).

    Each component depends on its own statistics only, so ``stats`` may hold any number ``K'`` of
    components (e.g. one merged candidate per pair); ``base`` has one row per fit ``(B, ...)``."""
    if base.covariance == "lowrank":
        return VariationalParams("lowrank", **lowrank_component_update(stats.count, stats.s1, stats.s2, base))
    n_k = stats.count.clamp_min(0.0)  # (B, K')
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
    return VariationalParams(base.covariance, mean, beta, dof, **comp)


def weight_update(n_k: Tensor, prior: WeightPrior, alpha: Tensor) -> VariationalParams:
    """The weight factors (sticks or Dirichlet, and ``q(alpha)`` when learned) from the counts
    ``n_k (B, K)`` and the concentration ``alpha (B,)`` that the sticks' update uses
    (:meth:`WeightPrior.update <dpmodels.priors.WeightPrior.update>`). The returned parameters carry
    placeholder component fields (``D = 0``); only the weight fields are meant."""
    B, K = n_k.shape
    params = VariationalParams("diag", n_k.new_zeros(B, K, 0), torch.ones_like(n_k), torch.ones_like(n_k))
    return replace(params, **prior.update(n_k, alpha))


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
    return (
        component_elbo_terms(stats, params, base).sum(-1)
        + weight_elbo_terms(stats.count, params, prior)
        + stats.entropy
    )


def component_elbo_terms(stats: Stats, params: VariationalParams, base: BaseMeasure) -> Tensor:
    """Each component's share of the ELBO, ``(B, K')``: its expected data log-likelihood under
    ``q(z)`` minus ``KL(q(mu_k, Lambda_k) || base)``. A component with no points at the prior
    contributes zero. Like :func:`component_update`, it works for any number ``K'`` of components."""
    if params.covariance == "lowrank":
        return lowrank_elbo_terms(stats.count, stats.s1, stats.s2, params, base)
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
    return n_k * const - 0.5 * params.dof * trace - components_kl_terms(params, base)


def weight_elbo_terms(n_k: Tensor, params: VariationalParams, prior: WeightPrior) -> Tensor:
    """The weights' share of the ELBO, ``(B,)``: ``sum_k N_k E[log pi_k]`` minus the KL terms of the
    weights and of the concentration."""
    assign_term = (n_k * expected_log_weights(params)).sum(-1)
    return assign_term - prior.weights_kl(params) - prior.concentration_kl(params)


def select_fits(
    mask: Tensor, when_true: VariationalParams, when_false: VariationalParams
) -> VariationalParams:
    """Per-fit choice between two parameter sets; ``mask (B,)``."""
    out = {}
    for name, a in when_true.tensors().items():
        b = getattr(when_false, name)
        out[name] = torch.where(mask.reshape((-1,) + (1,) * (a.dim() - 1)), a, b)
    return replace(when_true, **out)


def best_factor_frame(stats: Stats, base: BaseMeasure, search_scale: bool = True) -> tuple[Stats, Tensor]:
    """Low-rank statistics with each component's factors re-expressed in the frame that gives the
    component the highest ELBO term: as they are, whitened
    (:func:`~dpmodels.models.lowrank.whiten_factor_stats`), or (``search_scale``) scaled by the best
    of a coarse and then a fine grid of factors (:func:`~dpmodels.models.lowrank.scale_factor_stats`,
    ``a`` in ``[0.78, 1.28]`` then within 2.5 % of the best). Each frame is an exact transformation
    of ``q(y)``, so the bound stays exact and, the frame as it is being a candidate, never drops.
    Returns ``(stats, component ELBO terms (B, K'))``, the terms including the entropy change. The
    choice is per component because the ELBO is a sum of per-component terms, the weights' term
    (counts only) and the entropy, so a merge candidate scored alone (:mod:`dpmodels.infer.merge`,
    which does not search the scale) is scored as it will be applied. Only components holding a
    point or more are searched (an empty one has no factors to transform). Other covariance types:
    ``stats`` unchanged."""
    terms = component_elbo_terms(stats, component_update(stats, base), base)
    if base.covariance != "lowrank":
        return stats, terms
    cols = (stats.count >= 1.0).any(0).nonzero().flatten()  # components some fit uses
    sub = Stats(*(t[:, cols] for t in (stats.count, stats.s1, stats.s2)), stats.entropy)
    sub_terms = terms[:, cols]
    best = (sub.s1, sub.s2, torch.zeros_like(sub_terms))
    s1, s2, gain = whiten_factor_stats(sub.count, sub.s1, sub.s2)
    best, sub_terms = _better_frame(
        best, sub_terms, (s1, s2, gain), _frame_terms(sub.count, s1, s2, base) + gain
    )
    if search_scale and len(cols):
        log_a = torch.zeros_like(sub_terms)
        for half_width in (0.25, 0.025):  # coarse, then fine around the best scale
            offsets = torch.linspace(-half_width, half_width, 11, dtype=terms.dtype, device=terms.device)
            cand_log_a = log_a.unsqueeze(-1) + offsets  # (B, K'', G)
            G = cand_log_a.shape[-1]
            rep = [t.repeat_interleave(G, 1) for t in (sub.count, sub.s1, sub.s2)]  # (B, K'' G, ...)
            c1, c2, c_gain = scale_factor_stats(*rep, cand_log_a.flatten(1).exp())
            cand_terms = (_frame_terms(rep[0], c1, c2, base) + c_gain).reshape(cand_log_a.shape)
            log_a = torch.gather(cand_log_a, 2, cand_terms.argmax(-1, keepdim=True)).squeeze(-1)
        s1, s2, gain = scale_factor_stats(sub.count, sub.s1, sub.s2, log_a.exp())
        cand = (s1, s2, gain)
        best, sub_terms = _better_frame(best, sub_terms, cand, _frame_terms(sub.count, s1, s2, base) + gain)
    s1, s2, gain = stats.s1.clone(), stats.s2.clone(), torch.zeros_like(terms)
    s1[:, cols], s2[:, cols], gain[:, cols] = best
    terms = terms.clone()
    terms[:, cols] = sub_terms
    return Stats(stats.count, s1, s2, stats.entropy + gain.sum(-1)), terms


def _frame_terms(count: Tensor, s1: Tensor, s2: Tensor, base: BaseMeasure) -> Tensor:
    stats = Stats(count, s1, s2, count.new_zeros(count.shape[0]))
    return component_elbo_terms(stats, component_update(stats, base), base)


def _better_frame(best: tuple, best_terms: Tensor, cand: tuple, cand_terms: Tensor) -> tuple:
    """Per component, the candidate frame ``(s1, s2, entropy change)`` where its terms are higher."""
    use = cand_terms > best_terms  # (B, K')
    frame = tuple(
        torch.where(use.reshape(use.shape + (1,) * (a.dim() - 2)), c, a)
        for a, c in zip(best, cand, strict=True)
    )
    return frame, torch.maximum(best_terms, cand_terms)
