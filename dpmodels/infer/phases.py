"""The two phases of the natural-gradient engine, resumable from a saved state.

* :func:`minibatch_phase` — stochastic variational inference (Hoffman et al. 2013): statistics of
  a minibatch, rescaled to ``N``, are blended into running statistics with step
  ``rho_t = (t + tau)^-kappa``.
* :func:`full_batch_phase` — coordinate ascent with merge moves, fit by fit.

Each phase takes the :class:`EngineState` (data, shift, base measure, options, generator, device,
dtype, tracker, shard), the current parameters and ``resume`` (the dict it handed to ``on_step``
earlier, or ``None``), and calls ``state.on_step(phase, state_fn, params)`` after every step; ``state_fn()`` returns, as plain tensors and
numbers, everything the phase needs to continue exactly from that point.

Determinism: on CPU every operation here is deterministic for a fixed number of threads (torch's
CPU reductions and ``scatter_add_`` run in a fixed order), so equal seeds give equal bits. On CUDA,
``scatter_add_``/``index_add_`` and some reductions use atomics whose order varies from run to run,
and cuBLAS may pick different kernels: GPU fits agree to round-off, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..distributed import Shard
from ..models.family import VariationalParams
from ..threads import rebalance
from .merge import candidate_pairs, try_merges
from .result import full_pass, reduce_stats
from .updates import Stats, best_factor_frame, e_step, elbo_from_stats, m_step, select_fits

__all__ = ["EngineState", "Tracker", "minibatch_phase", "full_batch_phase"]


class Tracker:
    """ELBO history (per point, nats) and per-fit change between the last two entries."""

    def __init__(self, num_points: int, tol: float):
        self.num_points, self.tol = num_points, tol
        self.history: list[Tensor] = []
        self.change: Tensor | None = None

    def add(self, elbo: Tensor) -> bool:
        per_point = (elbo / self.num_points).cpu()
        if self.history:
            self.change = (per_point - self.history[-1]).abs()
        self.history.append(per_point)
        return self.change is not None and bool((self.change < self.tol).all())

    def state(self) -> dict:
        return {"history": list(self.history), "change": self.change}

    def restore(self, state: dict) -> None:
        self.history, self.change = list(state["history"]), state["change"]


def _no_step(name: str, state_fn, params: VariationalParams, force: bool = False) -> None:
    """The default step callback: nothing to save."""


@dataclass
class EngineState:
    """What every phase of the natural engine reads, in one place.

    ``data (B, N_local, D)`` (tensor or :class:`~dpmodels.data.PointSource`; this rank's shard when
    data-parallel), ``shift (B, D)`` (the centring the parameters live in), ``base`` (the centred
    base measure), ``spec`` and ``options`` (:class:`~dpmodels.infer.NaturalOptions`), the random
    ``generator``, ``device`` and ``dtype`` of the E-step, ``chunk`` (points per E-step chunk), the
    ELBO ``tracker``, the :class:`~dpmodels.distributed.Shard` (global point count, reductions), the
    progress ``bar`` and ``on_step(phase, state_fn, params, force=False)``, called after every step.
    """

    data: object
    shift: Tensor
    base: object
    spec: object
    options: object
    generator: torch.Generator
    device: torch.device
    dtype: torch.dtype
    chunk: int
    tracker: Tracker
    shard: Shard
    bar: object = None
    on_step: Callable = _no_step

    @property
    def num_points(self) -> int:
        """``N`` over all ranks."""
        return self.shard.total

    def statistics(
        self,
        params: VariationalParams,
        fits: Tensor | None = None,
        pairs: Tensor | None = None,
        valid: Tensor | None = None,
    ):
        """One pass over all points (all ranks): :func:`~dpmodels.infer.result.full_pass` for ``params``
        (restricted to ``fits``, with ``shift`` restricted alike), with merge terms when ``pairs``
        (``valid``: which of them are candidates)."""
        shift = self.shift if fits is None else self.shift[fits]
        return full_pass(
            self.data, shift, params, self.chunk, self.device, self.dtype, pairs, fits, self.shard, valid
        )

    def update_bar(self, **postfix) -> None:
        """After every step: the progress bar, and this process's share of the cores
        (:func:`dpmodels.threads.rebalance`)."""
        rebalance()
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(**postfix)


def _stats_state(stats: Stats | None) -> dict | None:
    if stats is None:
        return None
    return {
        "count": stats.count.cpu(),
        "s1": stats.s1.cpu(),
        "s2": stats.s2.cpu(),
        "entropy": stats.entropy.cpu(),
    }


def _stats_from(state: dict | None, device) -> Stats | None:
    if state is None:
        return None
    return Stats(*(state[k].to(device) for k in ("count", "s1", "s2", "entropy")))


def _m_step_sorted(stats: Stats, params: VariationalParams, base_c, spec, sort: bool):
    """M-step; for stick-breaking priors also try components sorted by size, keep what has the higher
    ELBO. Low-rank components first take their factors whitened where that raises their ELBO
    term (:func:`~dpmodels.infer.updates.best_factor_frame`)."""
    if params.covariance == "lowrank":
        stats = best_factor_frame(stats, base_c)[0]
    new = m_step(stats, base_c, spec.prior, params)
    elbo = elbo_from_stats(stats, new, base_c, spec.prior)
    if not (sort and spec.prior.ordered):
        return new, elbo
    order = stats.count.argsort(dim=-1, descending=True)
    sorted_stats = stats.permute(order)
    cand = m_step(sorted_stats, base_c, spec.prior, params)
    cand_elbo = elbo_from_stats(sorted_stats, cand, base_c, spec.prior)
    better = cand_elbo > elbo
    return select_fits(better, cand, new), torch.where(better, cand_elbo, elbo)


def minibatch_phase(state: EngineState, params: VariationalParams, resume: dict | None):
    """SVI epochs over all points; returns ``(params, steps)``.

    Data-parallel, every rank draws the same permutation of the global indices (a shared
    generator), computes the statistics of the minibatch's points it holds, and the statistics are
    summed over ranks: the same steps as one process with all the data."""
    data, shift, base_c, spec, opts = state.data, state.shift, state.base, state.spec, state.options
    generator, device, dtype, tracker, shard = (
        state.generator,
        state.device,
        state.dtype,
        state.tracker,
        state.shard,
    )
    B, _, D = data.shape
    N = state.num_points
    M = opts.batch_size
    r = resume or {"epoch": 0, "start": 0, "perm": None, "stats": None, "step": 0, "epoch_elbo": []}
    stats, step, perm, first = _stats_from(r["stats"], device), r["step"], r["perm"], r["start"]
    epoch_elbo = [e.to(device) for e in r["epoch_elbo"]]
    for epoch in range(r["epoch"], opts.max_epochs):
        if perm is None:
            perm, epoch_elbo, first = torch.randperm(N, generator=generator), [], 0
        for start in range(first, N - M + 1, M):
            idx = shard.local_rows(perm[start : start + M].sort().values)
            x = data[:, idx].to(device=device, dtype=dtype) - shift.to(dtype).unsqueeze(1)
            params_c = params.map(lambda t: t.to(dtype))
            local = e_step(params_c, x)[0] if len(idx) else _zero_stats(params_c, B, D)
            batch_stats = reduce_stats(local, shard).scale(N / M)
            rho = (step + opts.tau) ** (-opts.kappa)
            stats = batch_stats if stats is None else stats.blend(batch_stats, rho)
            params = m_step(stats, base_c, spec.prior, params)
            epoch_elbo.append(elbo_from_stats(stats, params, base_c, spec.prior))
            step += 1
            state.update_bar()
            saved = {"epoch": epoch, "start": start + M, "perm": perm, "stats": stats, "step": step}
            state.on_step("minibatch", lambda s=saved, e=list(epoch_elbo): _mb_state(s, e), params)
        tracker.add(torch.stack(epoch_elbo).mean(0))
        perm = None
        if tracker.change is not None and bool((tracker.change < 10 * opts.tol).all()):
            break
    return params, step


def _zero_stats(params: VariationalParams, B: int, D: int) -> Stats:
    """Statistics of no points (a rank that holds none of a minibatch)."""
    K, dev = params.mean.shape[1], params.mean.device
    s1, s2 = (B, K, D), (B, K, D, D) if params.covariance == "full" else (B, K, D)
    if params.covariance == "lowrank":
        q = params.loadings.shape[-1] + 1
        s1, s2 = (B, K, D, q), (B, K, D + q * q)
    z = dict(dtype=torch.float64, device=dev)
    return Stats(torch.zeros(B, K, **z), torch.zeros(s1, **z), torch.zeros(s2, **z), torch.zeros(B, **z))


def _mb_state(state: dict, epoch_elbo: list[Tensor]) -> dict:
    return {**state, "stats": _stats_state(state["stats"]), "epoch_elbo": [e.cpu() for e in epoch_elbo]}


def _subset(params: VariationalParams, base_c, fits: Tensor | None):
    if fits is None:
        return params, base_c
    fields = ("mean", "mean_precision", "dof", "scale")
    return params.map(lambda t: t[fits]), replace(base_c, **{f: getattr(base_c, f)[fits] for f in fields})


def _scatter(params: VariationalParams, fits: Tensor | None, new: VariationalParams) -> VariationalParams:
    if fits is None:
        return new
    out = params.map(lambda t: t.clone())
    for name, t in new.tensors().items():
        getattr(out, name)[fits] = t
    return out


def _fresh_full_state(B: int, K: int, device) -> dict:
    return {
        "it": 0,
        "active": torch.ones(B, dtype=torch.bool),
        "want_check": torch.zeros(B, dtype=torch.bool),
        "rounds": torch.zeros(B, dtype=torch.long),
        "elbo": torch.full((B,), -torch.inf, dtype=torch.float64, device=device),
        "counts": torch.zeros(B, K, dtype=torch.float64, device=device),
        "last": torch.full((B,), torch.inf, dtype=torch.float64),
        "steps": 0,
        "n_merges": 0,
    }


def full_batch_phase(state: EngineState, params: VariationalParams, passes: int, resume: dict | None):
    """Coordinate ascent with merge checks, fit by fit: a fit that has converged (small ELBO change
    and no merge left that raises its ELBO) drops out of the computation while the others go on.

    Returns ``(params, elbo (B,), counts (B, K), converged (B,), steps, n_merges, last_change)``."""
    base_c, spec, opts, device = state.base, state.spec, state.options, state.device
    B, N = state.data.shape[0], state.num_points
    s = _fresh_full_state(B, spec.truncation, device) if resume is None else dict(resume)
    active, want_check, rounds, last = s["active"], s["want_check"], s["rounds"], s["last"]
    elbo, counts = s["elbo"].to(device), s["counts"].to(device)
    steps, n_merges = s["steps"], s["n_merges"]
    for it in range(s["it"], passes):
        act = active.nonzero().flatten()
        if len(act) == 0:
            break
        fits = None if len(act) == B else act.to(device)
        p_sub, b_sub = _subset(params, base_c, fits)
        can_merge = opts.merge & (rounds[act] < opts.max_merge_rounds)
        due = it > 0 and it % opts.merge_every == 0
        check = can_merge & (want_check[act] | due)
        if bool(check.any()):
            pairs, valid = candidate_pairs(p_sub, counts if fits is None else counts[fits])
            valid = valid & check.to(valid.device).unsqueeze(-1)  # merge only the fits that are due
            stats, comp, pair, moved = state.statistics(p_sub, fits, pairs, valid)
        else:
            stats = state.statistics(p_sub, fits)
        new, new_elbo = _m_step_sorted(stats, p_sub, b_sub, spec, opts.sort_components)
        merged = torch.zeros(len(act), dtype=torch.bool)
        if bool(check.any()):
            new, new_elbo, n_merged = try_merges(
                stats, comp, pair, pairs, valid, new, new_elbo, p_sub, b_sub, spec.prior, moved
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
        state.tracker.history.append((elbo / N).cpu().clone())
        steps += 1
        state.update_bar(elbo_per_point=f"{float(elbo.mean() / N):.4f}", active=int(active.sum()))
        saved = {
            "it": it + 1, "active": active.clone(), "want_check": want_check.clone(), "rounds": rounds.clone(),
            "elbo": elbo.cpu().clone(), "counts": counts.cpu().clone(), "last": last.clone(),
            "steps": steps, "n_merges": n_merges,
        }  # fmt: skip
        state.on_step("full", lambda st=saved: st, params)
    finite = last[torch.isfinite(last)]
    last_change = float(finite.max()) if len(finite) else float("nan")
    return params, elbo, counts, ~active, steps, n_merges, last_change
