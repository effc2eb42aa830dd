"""The two phases of the natural-gradient engine, resumable from a saved state.

* :func:`minibatch_phase` — stochastic variational inference (Hoffman et al. 2013): statistics of
  a minibatch, rescaled to ``N``, are blended into running statistics with step
  ``rho_t = (t + tau)^-kappa``.
* :func:`full_batch_phase` — coordinate ascent with merge moves, fit by fit.

Each phase takes ``resume`` (the dict it handed to ``on_step`` earlier, or ``None``) and calls
``on_step(phase, state_fn, params)`` after every step; ``state_fn()`` returns, as plain tensors and
numbers, everything the phase needs to continue exactly from that point.

Determinism: on CPU every operation here is deterministic for a fixed number of threads (torch's
CPU reductions and ``scatter_add_`` run in a fixed order), so equal seeds give equal bits. On CUDA,
``scatter_add_``/``index_add_`` and some reductions use atomics whose order varies from run to run,
and cuBLAS may pick different kernels: GPU fits agree to round-off, not bit for bit.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..models.family import VariationalParams
from .merge import candidate_pairs, try_merges
from .result import full_pass, reduce_stats
from .updates import Stats, e_step, elbo_from_stats, m_step, select_fits

__all__ = ["Tracker", "minibatch_phase", "full_batch_phase"]


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
    """M-step; for stick-breaking priors also try components sorted by size, keep what has the higher ELBO."""
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


def minibatch_phase(
    data,
    shift,
    params,
    base_c,
    spec,
    opts,
    generator,
    device,
    dtype,
    tracker,
    bar,
    on_step,
    resume,
    shard=None,
):
    """SVI epochs over ``data (B, N, D)``; returns ``(params, steps)``.

    Data-parallel (``shard`` with a group), every rank draws the same permutation of the global
    indices (a shared generator), computes the statistics of the minibatch's points it holds, and
    the statistics are summed over ranks: the same steps as one process with all the data."""
    B, N, D = data.shape
    if shard is not None:
        N = shard.total
    M = opts.batch_size
    r = resume or {"epoch": 0, "start": 0, "perm": None, "stats": None, "step": 0, "epoch_elbo": []}
    stats, step, perm, first = _stats_from(r["stats"], device), r["step"], r["perm"], r["start"]
    epoch_elbo = [e.to(device) for e in r["epoch_elbo"]]
    for epoch in range(r["epoch"], opts.max_epochs):
        if perm is None:
            perm, epoch_elbo, first = torch.randperm(N, generator=generator), [], 0
        for start in range(first, N - M + 1, M):
            idx = perm[start : start + M].sort().values
            if shard is not None:
                idx = shard.local_rows(idx)
            x = data[:, idx].to(device=device, dtype=dtype) - shift.to(dtype).unsqueeze(1)
            params_c = params.map(lambda t: t.to(dtype))
            local = e_step(params_c, x)[0] if len(idx) else _zero_stats(params_c, B, D)
            batch_stats = reduce_stats(local, shard).scale(N / M)
            rho = (step + opts.tau) ** (-opts.kappa)
            stats = batch_stats if stats is None else stats.blend(batch_stats, rho)
            params = m_step(stats, base_c, spec.prior, params)
            epoch_elbo.append(elbo_from_stats(stats, params, base_c, spec.prior))
            step += 1
            bar.update(1)
            state = {"epoch": epoch, "start": start + M, "perm": perm, "stats": stats, "step": step}
            on_step("minibatch", lambda s=state, e=list(epoch_elbo): _mb_state(s, e), params)
        tracker.add(torch.stack(epoch_elbo).mean(0))
        perm = None
        if tracker.change is not None and bool((tracker.change < 10 * opts.tol).all()):
            break
    return params, step


def _zero_stats(params: VariationalParams, B: int, D: int) -> Stats:
    """Statistics of no points (a rank that holds none of a minibatch)."""
    K, dev = params.mean.shape[1], params.mean.device
    s2 = (B, K, D, D) if params.covariance == "full" else (B, K, D)
    z = dict(dtype=torch.float64, device=dev)
    return Stats(torch.zeros(B, K, **z), torch.zeros(B, K, D, **z), torch.zeros(s2, **z), torch.zeros(B, **z))


def _mb_state(state: dict, epoch_elbo: list[Tensor]) -> dict:
    return {**state, "stats": _stats_state(state["stats"]), "epoch_elbo": [e.cpu() for e in epoch_elbo]}


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


def full_batch_phase(
    data, shift, params, base_c, spec, opts, passes, chunk, device, dtype, tracker, bar, on_step, resume,
    shard=None,
):  # fmt: skip
    """Coordinate ascent with merge checks, fit by fit: a fit that has converged (small ELBO change
    and no merge left that raises its ELBO) drops out of the computation while the others go on.

    Returns ``(params, elbo (B,), counts (B, K), converged (B,), steps, n_merges, last_change)``."""
    B, N = data.shape[0], (data.shape[1] if shard is None else shard.total)
    s = _fresh_full_state(B, spec.truncation, device) if resume is None else dict(resume)
    active, want_check, rounds, last = s["active"], s["want_check"], s["rounds"], s["last"]
    elbo, counts = s["elbo"].to(device), s["counts"].to(device)
    steps, n_merges = s["steps"], s["n_merges"]
    for it in range(s["it"], passes):
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
            stats, comp, pair = full_pass(data, s_sub, p_sub, chunk, device, dtype, pairs, fits, shard)
        else:
            stats = full_pass(data, s_sub, p_sub, chunk, device, dtype, fits=fits, shard=shard)
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
        state = {
            "it": it + 1, "active": active.clone(), "want_check": want_check.clone(), "rounds": rounds.clone(),
            "elbo": elbo.cpu().clone(), "counts": counts.cpu().clone(), "last": last.clone(),
            "steps": steps, "n_merges": n_merges,
        }  # fmt: skip
        on_step("full", lambda st=state: st, params)
    finite = last[torch.isfinite(last)]
    last_change = float(finite.max()) if len(finite) else float("nan")
    return params, elbo, counts, ~active, steps, n_merges, last_change
