"""The natural-gradient engine: closed-form conjugate updates, full batch or minibatches.

Full batch (``batch_size=None``) is coordinate-ascent VI: every iteration is an E-step over all
points (in chunks, so memory stays bounded) and an M-step; the ELBO never decreases. With
minibatches it is stochastic variational inference (Hoffman et al. 2013): statistics of a
minibatch, rescaled to ``N``, are blended into running statistics with step
``rho_t = (t + tau)^-kappa``, which is a natural-gradient step for the conjugate family; a few
full-batch passes then polish the result. All ``B`` fits run as one tensor program.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..models.dpgmm import ModelSpec
from ..models.family import VariationalParams
from .init import initial_stats
from .merge import candidate_pairs, try_merges
from .result import ConvergenceWarning, FitResult, auto_chunk_size, full_pass
from .updates import Stats, e_step, elbo_from_stats, m_step, select_fits

__all__ = ["NaturalOptions", "fit_natural", "centred_base", "initial_params"]


@dataclass
class NaturalOptions:
    """Settings of the natural-gradient engine.

    ``tol`` is the ELBO change per point (nats) below which a fit has converged; ``max_iter``
    bounds the full-batch iterations; with ``batch_size`` set, ``max_epochs`` bounds the minibatch
    phase and ``final_passes`` the full-batch polish after it. In full-batch mode with more than
    twice ``warm_start_points`` points, a complete fit (merges included) on that many random
    points starts the full-data iterations (``None`` turns this off).
    """

    max_iter: int = 300
    tol: float = 1e-5
    batch_size: int | None = None
    max_epochs: int = 20
    final_passes: int = 100
    tau: float = 1.0
    kappa: float = 0.7
    chunk_size: int | None = None
    init_subsample: int = 20_000
    warm_start_points: int | None = 25_000
    sort_components: bool = True
    merge: bool = True
    max_merge_rounds: int = 50
    merge_every: int = 2
    progress: bool = True


def centred_base(spec: ModelSpec):
    """The base measure in float64, centred at its own mean; returns ``(base_c, shift (B, D))``."""
    base = spec.base.to(dtype=torch.float64)
    shift = base.mean.clone()
    return replace(base, mean=torch.zeros_like(base.mean)), shift


def initial_params(data: Tensor, spec: ModelSpec, generator: torch.Generator, subsample: int, device):
    """k-means-initialised float64 params (centred) and the centring shift."""
    base_c, shift = centred_base(spec)
    B, N, D = data.shape
    n = min(N, subsample)
    idx = torch.randperm(N, generator=generator)[:n].sort().values
    x = data[:, idx].to(device=device, dtype=torch.float64) - shift.to(device).unsqueeze(1)
    stats = initial_stats(x, spec.truncation, N, generator, covariance=spec.covariance)
    return m_step(stats, base_c.to(device=device), spec.prior), base_c.to(device=device), shift.to(device)


class _Tracker:
    """ELBO history and per-fit convergence."""

    def __init__(self, num_points: int, tol: float):
        self.num_points, self.tol = num_points, tol
        self.history: list[Tensor] = []
        self.change: Tensor | None = None

    def add(self, elbo: Tensor) -> Tensor:
        per_point = (elbo / self.num_points).cpu()
        if self.history:
            self.change = (per_point - self.history[-1]).abs()
        self.history.append(per_point)
        return self.change is not None and bool((self.change < self.tol).all())


def _m_step_sorted(stats: Stats, params: VariationalParams, base_c, spec: ModelSpec, sort: bool):
    """M-step; for stick-breaking priors also try components sorted by size, keep what has the higher ELBO."""
    new = m_step(stats, base_c, spec.prior, params)
    elbo = elbo_from_stats(stats, new, base_c, spec.prior)
    if not (sort and spec.prior.uses_sticks):
        return new, elbo
    order = stats.count.argsort(dim=-1, descending=True)
    sorted_stats = stats.permute(order)
    cand = m_step(sorted_stats, base_c, spec.prior, params)
    cand_elbo = elbo_from_stats(sorted_stats, cand, base_c, spec.prior)
    better = cand_elbo > elbo
    return select_fits(better, cand, new), torch.where(better, cand_elbo, elbo)


def _minibatch_phase(data, shift, params, base_c, spec, opts, generator, device, dtype, tracker, bar):
    B, N, _ = data.shape
    M = opts.batch_size
    stats = None
    step = 0
    for _epoch in range(opts.max_epochs):
        perm = torch.randperm(N, generator=generator)
        epoch_elbo = []
        for start in range(0, N - M + 1, M):
            idx = perm[start : start + M].sort().values
            x = data[:, idx].to(device=device, dtype=dtype) - shift.to(dtype).unsqueeze(1)
            params_c = params.map(lambda t: t.to(dtype))
            batch_stats = e_step(params_c, x)[0].scale(N / M)
            rho = (step + opts.tau) ** (-opts.kappa)
            stats = batch_stats if stats is None else stats.blend(batch_stats, rho)
            params = m_step(stats, base_c, spec.prior, params)
            epoch_elbo.append(elbo_from_stats(stats, params, base_c, spec.prior))
            step += 1
            bar.update(1)
        tracker.add(torch.stack(epoch_elbo).mean(0))
        if tracker.change is not None and bool((tracker.change < 10 * opts.tol).all()):
            break
    return params, step


def _subset(params: VariationalParams, base_c, shift: Tensor, fits: Tensor | None):
    if fits is None:
        return params, base_c, shift
    fields = ("mean", "mean_precision", "dof", "scale")
    return (
        params.map(lambda t: t[fits]),
        replace(base_c, **{f: getattr(base_c, f)[fits] for f in fields}),
        shift[fits],
    )


def _scatter(params: VariationalParams, fits: Tensor | None, new: VariationalParams) -> VariationalParams:
    if fits is None:
        return new
    out = params.map(lambda t: t.clone())
    for name, t in new.tensors().items():
        getattr(out, name)[fits] = t
    return out


def _full_batch_phase(data, shift, params, base_c, spec, opts, passes, chunk, device, dtype, tracker, bar):
    """Coordinate ascent with merge checks, fit by fit: a fit that has converged (small ELBO change
    and no merge left that raises its ELBO) drops out of the computation while the others go on."""
    B, N = data.shape[0], data.shape[1]
    active = torch.ones(B, dtype=torch.bool)
    want_check = torch.zeros(B, dtype=torch.bool)
    rounds = torch.zeros(B, dtype=torch.long)
    elbo = torch.full((B,), -torch.inf, dtype=torch.float64, device=device)
    counts = torch.zeros(B, spec.truncation, dtype=torch.float64, device=device)
    last = torch.full((B,), torch.inf, dtype=torch.float64)
    steps, n_merges = 0, 0
    for it in range(passes):
        act = active.nonzero().flatten()
        if len(act) == 0:
            break
        fits = None if len(act) == B else act.to(device)
        p_sub, b_sub, s_sub = _subset(params, base_c, shift, fits)
        can_merge = opts.merge & (rounds[act] < opts.max_merge_rounds)
        due = it > 0 and it % opts.merge_every == 0
        check = can_merge & (want_check[act] | due)
        if bool(check.any()):
            pairs, valid = candidate_pairs(p_sub, counts if fits is None else counts[fits])
            valid = valid & check.to(valid.device).unsqueeze(-1)  # merge only the fits that are due
            stats, comp, pair = full_pass(data, s_sub, p_sub, chunk, device, dtype, pairs, fits)
        else:
            stats = full_pass(data, s_sub, p_sub, chunk, device, dtype, fits=fits)
        new, new_elbo = _m_step_sorted(stats, p_sub, b_sub, spec, opts.sort_components)
        merged = torch.zeros(len(act), dtype=torch.bool)
        if bool(check.any()):
            new, new_elbo, n_merged = try_merges(
                stats, comp, pair, pairs, valid, new, new_elbo, p_sub, b_sub, spec.prior
            )
            merged = (n_merged > 0).cpu()
            n_merges += int(n_merged.sum())
            rounds[act] += check.long()
        params = _scatter(params, fits, new)
        idx = slice(None) if fits is None else fits
        change = ((new_elbo - elbo[idx]).abs() / N).cpu()
        elbo[idx] = new_elbo
        # N_k of the parameters kept (sorting or a merge may have reordered them): dof = dof0 + N_k
        counts[idx] = (new.dof - b_sub.dof.unsqueeze(-1)).clamp_min(0.0)
        last[act] = change
        small = change < opts.tol
        done = small & ~merged & (check | ~can_merge)
        want_check[act] = small & can_merge & ~check
        active[act[done]] = False
        tracker.history.append((elbo / N).cpu().clone())
        steps += 1
        bar.update(1)
        bar.set_postfix(elbo_per_point=f"{float(elbo.mean() / N):.4f}", active=int(active.sum()))
    finite = last[torch.isfinite(last)]
    return (
        params,
        elbo,
        counts,
        ~active,
        steps,
        n_merges,
        float(finite.max()) if len(finite) else float("nan"),
    )


def _warm_start(data, spec, generator, seed, opts, device):
    """Fit a random subsample completely; its posterior (in centred float64) starts the full fit."""
    N, n = data.shape[1], opts.warm_start_points
    idx = torch.randperm(N, generator=generator)[:n].sort().values
    sub_opts = replace(opts, warm_start_points=None, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the full-data phase decides convergence
        sub = fit_natural(data[:, idx], spec, seed=seed, options=sub_opts, device=device)
    base_c, shift = centred_base(spec)
    params = sub.params.map(lambda t: t.to(device=device, dtype=torch.float64))
    params.mean = params.mean - shift.to(device).unsqueeze(1)
    info = {"points": n, "iterations": sub.n_iter, "merges": sub.info["merges"], "seconds": sub.fit_seconds}
    return params, base_c.to(device=device), shift.to(device), info


def fit_natural(
    data: Tensor,
    spec: ModelSpec,
    seed: int = 0,
    options: NaturalOptions | None = None,
    device: str | torch.device = "cpu",
) -> FitResult:
    """Fit ``B`` mixtures to ``data (B, N, D)`` with closed-form natural-gradient updates."""
    opts = options or NaturalOptions()
    device = torch.device(device)
    dtype = data.dtype if data.dtype in (torch.float32, torch.float64) else torch.float32
    B, N, D = data.shape
    K = spec.truncation
    width = max(K, D * D if spec.covariance == "full" else D)  # per-point width of the temporaries
    chunk = opts.chunk_size or auto_chunk_size(B, 1, width)
    generator = torch.Generator().manual_seed(seed)
    start_time = time.perf_counter()
    minibatch = opts.batch_size is not None and opts.batch_size < N
    warm = opts.warm_start_points
    if not minibatch and warm is not None and N > 2 * warm:
        params, base_c, shift, warm_info = _warm_start(data, spec, generator, seed, opts, device)
    else:
        params, base_c, shift = initial_params(data, spec, generator, opts.init_subsample, device)
        warm_info = None
    tracker = _Tracker(N, opts.tol)
    total = opts.max_epochs * (N // opts.batch_size) if minibatch else opts.max_iter
    n_steps, converged = 0, False
    with tqdm(total=total, desc=f"natural VI (B={B}, K={K})", disable=not opts.progress, leave=False) as bar:
        if minibatch:
            params, n_steps = _minibatch_phase(
                data, shift, params, base_c, spec, opts, generator, device, dtype, tracker, bar
            )
        passes = max(1, opts.final_passes if minibatch else opts.max_iter)  # at least one full pass
        params, elbo, counts, conv, steps, n_merges, last_change = _full_batch_phase(
            data, shift, params, base_c, spec, opts, passes, chunk, device, dtype, tracker, bar
        )
        n_steps += steps
    converged = bool(conv.all())
    if not converged:
        warnings.warn(
            f"natural VI stopped after {n_steps} steps without converging ({int((~conv).sum())} of {B} fits): "
            f"last ELBO change {last_change:.2e} nats/point > tol={opts.tol:.0e}; "
            "raise max_iter (or final_passes) or loosen tol.",
            ConvergenceWarning,
            stacklevel=2,
        )
    out = params.map(lambda t: t.to(dtype))
    out.mean = (params.mean + shift.unsqueeze(1)).to(dtype)
    return FitResult(
        params=out,
        spec=spec,
        elbo=elbo.cpu(),
        elbo_history=torch.stack(tracker.history),
        counts=counts.to(dtype).cpu(),
        num_points=N,
        n_iter=n_steps,
        converged=conv,
        fit_seconds=time.perf_counter() - start_time,
        engine="natural",
        info={"chunk_size": chunk, "minibatch": minibatch, "merges": n_merges, "warm_start": warm_info},
    )
