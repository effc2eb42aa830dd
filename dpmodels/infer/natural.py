"""The natural-gradient engine: closed-form conjugate updates, full batch or minibatches.

Full batch (``batch_size=None``) is coordinate-ascent VI: every iteration is an E-step over all
points (in chunks, so memory stays bounded) and an M-step; the ELBO never decreases. With
minibatches it is stochastic variational inference (Hoffman et al. 2013): statistics of a
minibatch, rescaled to ``N``, are blended into running statistics with step
``rho_t = (t + tau)^-kappa``, which is a natural-gradient step for the conjugate family; a few
full-batch passes then polish the result. All ``B`` fits run as one tensor program.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..distributed import DataParallel, Shard
from ..models.dpgmm import ModelSpec
from ..models.family import VariationalParams
from ..models.lowrank import initial_lowrank_stats
from ..threads import fit_threads
from .checkpoint import FitCheckpointer, FitCheckpointError, fingerprint, params_from_state, params_to_state
from .init import initial_stats
from .phases import EngineState, Tracker, full_batch_phase, minibatch_phase
from .result import ConvergenceWarning, FitResult, auto_chunk_size
from .updates import Stats, m_step

__all__ = [
    "NaturalOptions",
    "fit_natural",
    "centred_base",
    "initial_params",
    "check_full_covariance_fits",
    "full_covariance_bytes",
]


@dataclass(frozen=True)
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


E_STEP_ELEMENTS = 2**20  # values per (B, chunk, K) or (B, chunk, D) temporary of a full pass

# Bytes per element of (B, K, D, D) that a full-covariance fit holds at its peak, counted from the
# engine: about ten float64 copies of the components (running and chunk statistics, Psi, Cholesky
# factors, the sorted alternative, the quadratic plan) plus four of the 3 K merge candidates.
FULL_BYTES_PER_ELEMENT = 8 * (10 + 4 * 3)


def full_covariance_bytes(batch: int, truncation: int, num_features: int) -> int:
    """Estimated peak bytes of a full-covariance fit's ``(B, K, D, D)`` state."""
    return FULL_BYTES_PER_ELEMENT * batch * truncation * num_features**2


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: free device memory; CPU: ``MemAvailable``), or ``None``."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_full_covariance_fits(spec: ModelSpec, batch: int, num_features: int, device: torch.device) -> None:
    """One clear error, before any work, when full covariances at this width cannot fit in memory."""
    if spec.covariance != "full":
        return
    need, free = full_covariance_bytes(batch, spec.truncation, num_features), available_bytes(device)
    if free is not None and need > free:
        raise ValueError(
            f"full covariance at D={num_features} with truncation K={spec.truncation} and B={batch} fits "
            f"needs about {need / 2**30:.1f} GiB for its (B, K, D, D) state, but only {free / 2**30:.1f} GiB "
            f"is free on {device}; use covariance='diag', lower the truncation, or project to fewer "
            "dimensions first (PCA: layers.pca_dim, dpmodels.activations)."
        )


def centred_base(spec: ModelSpec):
    """The base measure in float64, centred at its own mean; returns ``(base_c, shift (B, D))``."""
    base = spec.base.to(dtype=torch.float64)
    shift = base.mean.clone()
    return replace(base, mean=torch.zeros_like(base.mean)), shift


def initial_params(
    data: Tensor,
    spec: ModelSpec,
    generator: torch.Generator,
    subsample: int,
    device,
    shard: Shard | None = None,
):
    """k-means-initialised float64 params (centred) and the centring shift.

    With ``shard`` (data-parallel), the subsample is drawn from the indices of all ranks' points
    and gathered on every rank, so every rank starts from the same parameters."""
    base_c, shift = centred_base(spec)
    shard = shard or Shard.of(data.shape[1], None)
    N = shard.total
    n = min(N, subsample)
    idx = torch.randperm(N, generator=generator)[:n].sort().values
    x = shard.gather_rows(data, idx).to(device=device, dtype=torch.float64) - shift.to(device).unsqueeze(1)
    if spec.covariance == "lowrank":  # k-means clusters, then each cluster's principal axes
        hard = initial_stats(x, spec.truncation, N, generator, covariance="diag")
        stats = Stats(*initial_lowrank_stats(x, hard.count, hard.s1, spec.base.rank, N / x.shape[1]))
    else:
        stats = initial_stats(x, spec.truncation, N, generator, covariance=spec.covariance)
    return m_step(stats, base_c.to(device=device), spec.prior), base_c.to(device=device), shift.to(device)


def _warm_start(data, spec, generator, seed, opts, device, shard: Shard):
    """Fit a random subsample completely; its posterior (in centred float64) starts the full fit.
    Data-parallel, the subsample is gathered from all ranks and every rank fits it alone (the same
    computation on the same numbers, hence the same result everywhere)."""
    N, n = shard.total, opts.warm_start_points
    idx = torch.randperm(N, generator=generator)[:n].sort().values
    sub_opts = replace(opts, warm_start_points=None, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the full-data phase decides convergence
        sub = fit_natural(shard.gather_rows(data, idx), spec, seed=seed, options=sub_opts, device=device)
    shift = centred_base(spec)[1]
    params = sub.params.map(lambda t: t.to(device=device, dtype=torch.float64))
    params.mean = params.mean - shift.to(device).unsqueeze(1)
    info = {"points": n, "iterations": sub.n_iter, "merges": sub.info["merges"], "seconds": sub.fit_seconds}
    return params, info


@fit_threads()
def fit_natural(
    data: Tensor,
    spec: ModelSpec,
    seed: int = 0,
    options: NaturalOptions | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: float = 30.0,
    keep_checkpoint: bool = False,
    group: DataParallel | None = None,
) -> FitResult:
    """Fit ``B`` mixtures to ``data (B, N, D)`` with closed-form natural-gradient updates.

    With ``checkpoint`` (a file path) the engine's full state is saved there atomically at most
    every ``checkpoint_every`` seconds of wall time (``0``: after every step); a call that finds a
    matching checkpoint resumes from it and, on CPU, ends with bit-for-bit the result of an
    uninterrupted fit. A checkpoint from another fit (other data or settings) or an unreadable one
    raises :class:`~dpmodels.infer.checkpoint.FitCheckpointError` and is left untouched. After a
    successful fit the file is removed, unless ``keep_checkpoint`` (then it holds the final state,
    and calling again returns the same result at once).

    With ``group`` (a :class:`~dpmodels.distributed.DataParallel`), ``data`` is this rank's shard
    and the fit is that of all ranks' shards concatenated in rank order (see
    :mod:`dpmodels.distributed`); every rank returns the same result, only rank 0 writes the
    checkpoint, and every rank resumes from it.
    """
    opts = options or NaturalOptions()
    state = _engine_state(data, spec, seed, opts, torch.device(device), group)
    check_full_covariance_fits(spec, data.shape[0], data.shape[2], state.device)
    run = _Run(state, seed, _open_checkpoint(state, seed, checkpoint, checkpoint_every, group))
    run.start()
    run.phases()
    return run.finish(keep_checkpoint)


def _engine_state(data, spec: ModelSpec, seed: int, opts: NaturalOptions, device, group) -> EngineState:
    """The state the phases share: centring, base measure, generator, E-step chunk, tracker, shard."""
    dtype = data.dtype if data.dtype in (torch.float32, torch.float64) else torch.float32
    B, _, D = data.shape
    shard = Shard.of(data.shape[1], group)
    # per-point width of the chunk's temporaries: (B, n, K) responsibilities and (B, n, D) points; the
    # quadratic forms and scatters block their own wider temporaries (dpmodels.models.quadratic)
    # (4 MiB each: the E-step's transient memory stays far below the data's, which data-parallel
    # ranks split; 16 MiB chunks were no faster and left ~150 MiB of allocator-held temporaries)
    chunk = opts.chunk_size or auto_chunk_size(B, 1, max(spec.truncation, D), E_STEP_ELEMENTS)
    base_c, shift = centred_base(spec)
    return EngineState(
        data=data, shift=shift.to(device), base=base_c.to(device=device), spec=spec, options=opts,
        generator=torch.Generator().manual_seed(seed), device=device, dtype=dtype, chunk=chunk,
        tracker=Tracker(shard.total, opts.tol), shard=shard,
    )  # fmt: skip


def _open_checkpoint(state: EngineState, seed: int, path, every: float, group) -> FitCheckpointer | None:
    """The checkpointer of this fit (``None`` without a path), its fingerprint covering every shard."""
    if path is None:
        return None
    mark = fingerprint(state.data, state.spec, seed, state.options, state.chunk, state.dtype, state.device)
    if group is not None:  # one fingerprint of all shards, in rank order
        mark["data"] = f"ranks={group.world_size} " + " | ".join(group.all_gather_object(mark["data"]))
    return FitCheckpointer(path, every, mark)


class _Run:
    """One call of :func:`fit_natural`, in named steps: :meth:`start` (resume from the checkpoint, or
    initialise: warm start or k-means), :meth:`phases` (minibatch SVI, then full batch with merges,
    saving checkpoints through :meth:`on_step`), :meth:`finish` (the checkpoint's fate, the
    convergence warning, the result in data coordinates)."""

    def __init__(self, state: EngineState, seed: int, ckpt: FitCheckpointer | None):
        self.state, self.seed = state, seed
        opts, N = state.options, state.num_points
        self.minibatch = opts.batch_size is not None and opts.batch_size < N
        self.group = state.shard.group
        self.saved = _load_checkpoint(ckpt, self.group)
        # rank 0 alone writes (and finally removes) the checkpoint
        self.ckpt = ckpt if self.group is None or self.group.rank == 0 else None
        self.start_time = time.perf_counter()
        self.mb_steps, self.last_full = 0, []  # the full phase's latest state function (final save)
        state.on_step = self.on_step

    def start(self) -> None:
        state, saved, opts = self.state, self.saved, self.state.options
        if saved is not None:
            self.params = params_from_state(saved["params"], state.device)
            state.generator.set_state(saved["generator"])
            state.tracker.restore(saved["tracker"])
            self.warm_info, self.phase, self.elapsed = saved["warm_info"], saved["phase"], saved["elapsed"]
            return
        warm, data, spec, shard = opts.warm_start_points, state.data, state.spec, state.shard
        if not self.minibatch and warm is not None and state.num_points > 2 * warm:
            self.params, self.warm_info = _warm_start(
                data, spec, state.generator, self.seed, opts, state.device, shard
            )
        else:
            self.params = initial_params(
                data, spec, state.generator, opts.init_subsample, state.device, shard
            )[0]
            self.warm_info = None
        self.phase, self.elapsed = ("minibatch" if self.minibatch else "full"), 0.0

    def on_step(self, name: str, state_fn, current: VariationalParams, force: bool = False) -> None:
        if self.ckpt is None:
            return
        if name == "full":
            self.last_full[:] = [state_fn]
        if not (force or self.ckpt.due()):
            return
        self.ckpt.save(
            {
                "phase": name,
                name: state_fn(),
                "params": params_to_state(current),
                "generator": self.state.generator.get_state(),
                "tracker": self.state.tracker.state(),
                "warm_info": self.warm_info,
                "mb_steps": self.mb_steps,
                "elapsed": self.elapsed + time.perf_counter() - self.start_time,
            }
        )

    def phases(self) -> None:
        state, opts, saved = self.state, self.state.options, self.saved
        B, K = state.data.shape[0], state.spec.truncation
        total = opts.max_epochs * (state.num_points // opts.batch_size) if self.minibatch else opts.max_iter
        desc = f"natural VI (B={B}, K={K})"
        with tqdm(total=total, desc=desc, disable=not opts.progress, leave=False) as state.bar:
            if self.phase == "minibatch":
                resume = saved["minibatch"] if saved is not None else None
                self.params, self.mb_steps = minibatch_phase(state, self.params, resume)
            elif self.minibatch:
                self.mb_steps = saved["mb_steps"]
            resume_full = saved.get("full") if saved is not None and self.phase == "full" else None
            passes = max(1, opts.final_passes if self.minibatch else opts.max_iter)  # at least one full pass
            out = full_batch_phase(state, self.params, passes, resume_full)
            self.params, self.elbo, self.counts, self.conv, steps, self.n_merges, self.last_change = out
            self.n_steps = self.mb_steps + steps
        state.bar = None

    def finish(self, keep_checkpoint: bool) -> FitResult:
        state, opts, conv = self.state, self.state.options, self.conv
        if self.ckpt is not None:
            if keep_checkpoint and self.last_full:
                self.on_step("full", self.last_full[0], self.params, force=True)
            elif not keep_checkpoint:
                self.ckpt.remove()
        if not bool(conv.all()):
            warnings.warn(
                f"natural VI stopped after {self.n_steps} steps without converging ({int((~conv).sum())} of "
                f"{len(conv)} fits): last ELBO change {self.last_change:.2e} nats/point > tol={opts.tol:.0e}; "
                "raise max_iter (or final_passes) or loosen tol.",
                ConvergenceWarning,
                stacklevel=3,
            )
        dtype, params = state.dtype, self.params
        out = params.map(lambda t: t.to(dtype))
        out.mean = (params.mean + state.shift.unsqueeze(1)).to(dtype)
        group, shard = self.group, state.shard
        return FitResult(
            params=out,
            spec=state.spec,
            elbo=self.elbo.cpu(),
            elbo_history=torch.stack(state.tracker.history),
            counts=self.counts.to(dtype).cpu(),
            num_points=state.num_points,
            n_iter=self.n_steps,
            converged=conv,
            fit_seconds=self.elapsed + time.perf_counter() - self.start_time,
            engine="natural",
            info={
                "chunk_size": state.chunk,
                "minibatch": self.minibatch,
                "merges": self.n_merges,
                "warm_start": self.warm_info,
                **({} if group is None else {"world_size": group.world_size, "local_points": shard.local}),
            },
        )


def _load_checkpoint(ckpt: FitCheckpointer | None, group: DataParallel | None):
    """The saved state (or ``None``); data-parallel, rank 0 reads it and every rank gets its copy (or
    its error), so the ranks agree even where they do not share a file system."""
    if group is None:
        return ckpt.load() if ckpt is not None else None
    outcome = None
    if group.rank == 0:
        try:
            outcome = ("state", ckpt.load() if ckpt is not None else None)
        except FitCheckpointError as err:
            outcome = ("error", str(err))
    kind, value = group.broadcast_object(outcome)
    if kind == "error":
        raise FitCheckpointError(f"rank 0: {value}")
    return value
