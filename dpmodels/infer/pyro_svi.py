"""The generic engine: Pyro SVI with ``TraceEnum_ELBO`` and Adam over the guide's parameters.

It runs the model and guide of :mod:`dpmodels.models` exactly as written (no closed forms), so it
serves as the reference path and as the engine for priors without conjugate updates (e.g. a
learned Pitman–Yor or finite-Dirichlet concentration). It starts from the same k-means
initialisation as the natural engine. Convergence: the moving average of the per-point loss
improved by less than ``tol`` over the last ``patience`` steps.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace

import pyro
import pyro.optim
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, TraceEnum_ELBO
from torch import Tensor
from tqdm.auto import tqdm

from ..models.dpgmm import MAX_PLATE_NESTING, ModelSpec, dpgmm_model
from ..models.family import VariationalParams
from ..models.guide import dpgmm_guide
from ..threads import fit_threads, rebalance
from .natural import initial_params
from .result import ConvergenceWarning, FitResult, auto_chunk_size, full_pass
from .updates import elbo_from_stats

__all__ = ["PyroOptions", "fit_pyro"]


@dataclass(frozen=True)
class PyroOptions:
    max_steps: int = 2000
    learning_rate: float = 0.01
    batch_size: int | None = None
    num_particles: int = 1
    tol: float = 1e-4
    patience: int = 100
    init_subsample: int = 20_000
    progress: bool = True


def _constraint(name: str, D: int, covariance: str):
    if name == "mean":
        return constraints.real
    if name == "scale_tril":
        return constraints.lower_cholesky
    if name == "dof" and covariance == "full":
        return constraints.greater_than(D - 1.0)
    return constraints.positive


def _register(init: VariationalParams) -> list[str]:
    names = []
    for name, value in init.tensors().items():
        if value.numel() == 0:
            continue
        pyro.param(
            f"q_{name}",
            value.detach().clone(),
            constraint=_constraint(name, init.num_features, init.covariance),
        )
        names.append(name)
    return names


def _current(template: VariationalParams, names: list[str]) -> VariationalParams:
    return VariationalParams(
        covariance=template.covariance,
        **{n: (pyro.param(f"q_{n}") if n in names else getattr(template, n)) for n in template.tensors()},
    )


@fit_threads()
def fit_pyro(
    data: Tensor,
    spec: ModelSpec,
    seed: int = 0,
    options: PyroOptions | None = None,
    device: str | torch.device = "cpu",
) -> FitResult:
    """Fit ``B`` mixtures to ``data (B, N, D)`` by Pyro SVI. Clears Pyro's param store first."""
    opts = options or PyroOptions()
    device = torch.device(device)
    # float64: float32 Wishart draws of unused components (dof near D) can come out numerically
    # singular, which breaks the Cholesky inside MultivariateNormal; this path is the slow
    # reference, so the extra precision is cheap insurance.
    dtype = torch.float64
    B, N, D = data.shape
    generator = torch.Generator().manual_seed(seed)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    start_time = time.perf_counter()
    params64, base_c, shift = initial_params(data, spec, generator, opts.init_subsample, device)
    init = params64.map(lambda t: t.to(dtype))
    init.mean = (params64.mean + shift.unsqueeze(1)).to(dtype)
    if init.conc_shape is None:  # q(alpha) to start from when learned without a closed-form update
        init = replace(init, **spec.prior.start_concentration(init.mean_precision[:, 0]))
    names = _register(init)
    x = data[:, :].to(device=device, dtype=dtype)  # tensor or PointSource: the whole (small) data
    spec_c = ModelSpec(spec.prior, spec.base.to(dtype=dtype, device=device), spec.truncation)
    subsample = opts.batch_size if opts.batch_size and opts.batch_size < N else None

    def model(obs):
        return dpgmm_model(obs, spec_c, subsample_size=subsample)

    def guide(obs):
        return dpgmm_guide(obs, spec_c, _current(init, names), subsample_size=subsample)

    elbo_fn = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING, num_particles=opts.num_particles)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": opts.learning_rate}), elbo_fn)
    history, smoothed, best, since_best, converged = [], None, -float("inf"), 0, False
    with tqdm(range(opts.max_steps), desc=f"Pyro SVI (B={B})", disable=not opts.progress, leave=False) as bar:
        for _ in bar:
            rebalance()  # this process's share of the cores (dpmodels.threads)
            per_point = -svi.step(x) / (B * N)
            history.append(per_point)
            smoothed = per_point if smoothed is None else 0.95 * smoothed + 0.05 * per_point
            if smoothed > best + opts.tol:
                best, since_best = smoothed, 0
            else:
                since_best += 1
            bar.set_postfix(elbo_per_point=f"{smoothed:.4f}")
            if since_best >= opts.patience:
                converged = True
                break
    if not converged:
        warnings.warn(
            f"Pyro SVI used all {opts.max_steps} steps without the smoothed ELBO settling "
            f"(last {smoothed:.4f} nats/point, best {best:.4f}); raise max_steps or learning_rate.",
            ConvergenceWarning,
            stacklevel=2,
        )
    with torch.no_grad():
        fitted = _current(init, names).map(lambda t: t.detach().clone())
    return _finish(data, spec, fitted, base_c, shift, history, converged, start_time, device, dtype)


def _finish(data, spec, fitted, base_c, shift, history, converged, start_time, device, dtype) -> FitResult:
    """Closed-form final ELBO and counts, so results compare across engines."""
    B, N, D = data.shape
    centred = fitted.map(lambda t: t.double())
    centred.mean = centred.mean - shift.unsqueeze(1)
    chunk = auto_chunk_size(B, spec.truncation, D)
    with torch.no_grad():
        stats = full_pass(data, shift, centred, chunk, device, dtype)
        elbo = (
            elbo_from_stats(stats, centred, base_c, spec.prior)
            if spec.prior.closed_form
            else torch.full((B,), float("nan"), dtype=torch.float64)
        )
    hist = torch.tensor(history, dtype=torch.float64).unsqueeze(-1).expand(-1, B)
    return FitResult(
        params=fitted,
        spec=spec,
        elbo=elbo.cpu(),
        elbo_history=hist,
        counts=stats.count.to(dtype).cpu(),
        num_points=N,
        n_iter=len(history),
        converged=torch.full((B,), converged),
        fit_seconds=time.perf_counter() - start_time,
        engine="pyro",
    )
