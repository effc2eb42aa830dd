"""Spatially coupled assignments: a Potts term on each image's grid, mean-field in ``q(z)``.

The model (:func:`dpmodels.models.dpgmm_model` with ``coupling`` and ``edges``) multiplies the
mixture's joint by ``exp(beta * sum_{n~m} [z_n = z_m])`` over the grid's edges. The variational
family stays mean-field: ``q(z_n) = Categorical(r_n)`` per position, conjugate factors for the
globals. The objective maximised here is

    L(q) = ELBO_mixture(q) + beta * sum_{n~m} r_n . r_m ,

the mean-field bound on the log of the *unnormalised* joint: the Potts normaliser (a function of
``beta`` and the weights) is left out, as in Orbanz & Buhmann's MRF-constrained Dirichlet-process
mixtures (2008) and the mean-field EM of Celeux, Forbes & Peyrard (2003). At ``beta = 0`` it is
the mixture's ELBO exactly. It is what Pyro's ``Trace_ELBO`` estimates for this model and guide.

Coordinate ascent keeps it monotone: the grid is bipartite (colour ``(y + x) mod 2``), so all
positions of one colour are updated at once, each to its exact optimum
``log r_nk = E[log pi_k] + E[log N(x_n | theta_k)] + beta * sum_{m~n} r_mk + const``; then every
global factor gets its conjugate update from the coupled responsibilities (the mixture's M-step).
Merge moves are not used here: a coupled fit starts from a converged mixture fit.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..infer.natural import centred_base
from ..infer.result import ConvergenceWarning, FitResult, auto_chunk_size
from ..infer.updates import elbo_from_stats, m_step, stats_from_responsibilities
from ..models.dpgmm import ModelSpec
from ..models.family import VariationalParams, expected_log_likelihood, expected_log_weights, quadratic_plan
from ..models.quadratic import QuadraticPlan
from ..threads import fit_threads, rebalance
from .grid import Grid

__all__ = [
    "CoupledOptions",
    "check_coupling",
    "unary_logits",
    "coupled_sweep",
    "edge_agreement",
    "mean_field_assignments",
    "fit_coupled",
]


def check_coupling(coupling) -> float:
    """``coupling`` as a float, or a clear error when it is negative, not finite or not a number."""
    if isinstance(coupling, bool) or not isinstance(coupling, (int, float)) or not math.isfinite(coupling):
        raise ValueError(
            f"coupling must be a finite number >= 0 (nats per agreeing pair of neighbours), got {coupling!r}; "
            "try 1.0, or 0 for the plain mixture."
        )
    if coupling < 0:
        raise ValueError(
            f"coupling must be >= 0, got {coupling}: a negative Potts strength pushes neighbours apart and "
            "has no monotone mean-field fit here; use 0 for the plain mixture or a positive value."
        )
    return float(coupling)


@dataclass(frozen=True)
class CoupledOptions:
    """Settings of the coupled fit: ``coupling`` (``beta``, nats per agreeing pair of neighbours),
    ``max_iter`` coordinate-ascent iterations, ``tol`` (change of the bound per point, nats)."""

    coupling: float = 1.0
    max_iter: int = 100
    tol: float = 1e-5
    chunk_size: int | None = None
    progress: bool = False


def unary_logits(
    params: VariationalParams, x: Tensor, chunk: int, plan: QuadraticPlan | None = None
) -> Tensor:
    """``E[log pi_k] + E[log N(x_n | theta_k)]`` ``(B, N, K)`` for ``x (B, N, D)`` (same dtype/device);
    ``plan``: :func:`~dpmodels.models.family.quadratic_plan` of ``params`` when the caller has it."""
    e_log_pi = expected_log_weights(params).unsqueeze(1)  # (B, 1, K)
    plan = plan or quadratic_plan(params)
    parts = [
        e_log_pi + expected_log_likelihood(params, x[:, i : i + chunk], plan)
        for i in range(0, x.shape[1], chunk)
    ]
    return torch.cat(parts, 1)


def _neighbour_sum(r: Tensor, neighbours: Tensor) -> Tensor:
    """``sum_{m~n} r_m`` ``(B, n, K)`` for rows ``neighbours (n, 4)`` (``-1``: none) of ``r (B, N, K)``."""
    present = (neighbours >= 0).to(r.dtype)  # (n, 4)
    gathered = r[:, neighbours.clamp_min(0)]  # (B, n, 4, K)
    return (gathered * present[None, :, :, None]).sum(2)


def coupled_sweep(logits: Tensor, log_r: Tensor, grid: Grid, coupling: float, chunk: int = 65_536) -> Tensor:
    """One checkerboard sweep: colour 0 then colour 1, each position to its exact mean-field optimum
    given its neighbours. ``logits``, ``log_r``: ``(B, N, K)``; returns the new ``log r``."""
    log_r, r = log_r.clone(), log_r.exp()
    for colour in (0, 1):
        rows = (grid.colour == colour).nonzero().flatten()
        for i in range(0, len(rows), chunk):
            sub = rows[i : i + chunk]
            # neighbours of this colour's positions all have the other colour: r is current for them
            field = coupling * _neighbour_sum(r, grid.neighbours[sub])  # (B, n, K)
            log_r[:, sub] = torch.log_softmax(logits[:, sub] + field, dim=-1)
            r[:, sub] = log_r[:, sub].exp()
    return log_r


def edge_agreement(log_r: Tensor, edges: Tensor, chunk: int = 262_144) -> Tensor:
    """``sum_{n~m} r_n . r_m`` ``(B,)`` in float64: the expected number of agreeing edges under ``q(z)``."""
    total = torch.zeros(log_r.shape[0], dtype=torch.float64, device=log_r.device)
    for i in range(0, edges.shape[0], chunk):
        e = edges[i : i + chunk]
        total += (log_r[:, e[:, 0]].exp() * log_r[:, e[:, 1]].exp()).double().sum((1, 2))
    return total


def mean_field_assignments(
    logits: Tensor, grid: Grid, coupling: float, max_sweeps: int = 50, tol: float = 1e-4
) -> Tensor:
    """Coupled ``log r (B, N, K)`` with the globals held fixed: checkerboard sweeps from the uncoupled
    responsibilities until no responsibility moves by more than ``tol`` (or ``max_sweeps``)."""
    log_r = torch.log_softmax(logits, dim=-1)
    if coupling == 0.0 or grid.num_edges == 0:
        return log_r
    for _ in range(max_sweeps):
        new = coupled_sweep(logits, log_r, grid, coupling)
        moved = float((new.exp() - log_r.exp()).abs().max())
        log_r = new
        if moved < tol:
            break
    return log_r


@fit_threads()
def fit_coupled(
    data: Tensor, spec: ModelSpec, start: FitResult, grid: Grid, options: CoupledOptions, device="cpu"
) -> FitResult:
    """Coupled coordinate ascent on ``data (B, N, D)`` from the mixture fit ``start`` (same data and
    spec). Every fit of the batch shares ``grid`` (restarts of one layer). Returns a
    :class:`FitResult` whose ``elbo`` is the coupled bound (total nats), ``elbo_history`` the
    mixture fit's history followed by the coupled iterations', and ``info["log_resp"]`` the final
    coupled ``log r (B, N, K)``."""
    coupling = check_coupling(options.coupling)
    device = torch.device(device)
    B, N, D = data.shape
    if grid.num_points != N:
        raise ValueError(
            f"the grid has {grid.num_points} points but the data have {N}; build it from their index."
        )
    t0 = time.perf_counter()
    dtype = data.dtype if data.dtype in (torch.float32, torch.float64) else torch.float32
    chunk = options.chunk_size or auto_chunk_size(B, 1, max(spec.truncation, D))
    base_c, shift = centred_base(spec)
    base_c, shift = base_c.to(device=device), shift.to(device)
    x = torch.cat([data[:, i : i + chunk] for i in range(0, N, chunk)], 1).to(device=device, dtype=dtype)
    x = x - shift.to(dtype).unsqueeze(1)  # centred, (B, N, D)
    grid = grid.to(device)
    params = start.params.map(lambda t: t.to(device=device, dtype=torch.float64))
    params = replace(params, mean=params.mean - shift.unsqueeze(1))
    log_r, history, elbo, conv, it = None, [], None, torch.zeros(B, dtype=torch.bool), 0
    with tqdm(
        total=options.max_iter, desc=f"coupled VI (beta={coupling:g})", disable=not options.progress
    ) as bar:
        for step in range(1, options.max_iter + 1):
            it = step
            rebalance()  # this process's share of the cores (dpmodels.threads)
            params_c = params.map(lambda t: t.to(dtype))
            plan = quadratic_plan(params_c)  # per-component factors, once per iteration
            logits = unary_logits(params_c, x, chunk, plan)  # (B, N, K)
            log_r = torch.log_softmax(logits, -1) if log_r is None else log_r
            log_r = coupled_sweep(logits, log_r, grid, coupling)
            stats = stats_from_responsibilities(log_r, x, plan.form)
            params = m_step(stats, base_c, spec.prior, params)
            new = elbo_from_stats(stats, params, base_c, spec.prior) + coupling * edge_agreement(
                log_r, grid.edges
            )
            history.append((new / N).cpu())
            bar.update(1)
            if elbo is not None:
                conv = ((new - elbo).abs() / N).cpu() < options.tol
            elbo = new
            if bool(conv.all()):
                break
    if not bool(conv.all()):
        warnings.warn(
            f"coupled VI stopped after {it} iterations without converging: raise max_iter or loosen tol.",
            ConvergenceWarning,
            stacklevel=2,
        )
    out = params.map(lambda t: t.to(dtype))
    out = replace(out, mean=(params.mean + shift.unsqueeze(1)).to(dtype))
    info = {
        **start.info,
        "coupling": coupling,
        "coupled_iterations": it,
        "coupled_seconds": time.perf_counter() - t0,
        "log_resp": log_r.float().cpu(),
    }
    return FitResult(
        params=out,
        spec=spec,
        elbo=elbo.cpu(),
        elbo_history=torch.cat([start.elbo_history, torch.stack(history)], 0),
        counts=stats.count.to(dtype).cpu(),
        num_points=N,
        n_iter=start.n_iter + it,
        converged=conv,
        fit_seconds=start.fit_seconds + time.perf_counter() - t0,
        engine=start.engine,
        info=info,
    )
