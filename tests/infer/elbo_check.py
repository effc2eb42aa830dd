"""Helpers that compare closed-form ELBOs with Pyro's Monte Carlo estimates."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from pyro.infer import TraceEnum_ELBO

from dpmodels.infer.natural import centred_base
from dpmodels.infer.result import full_pass
from dpmodels.infer.updates import elbo_from_stats
from dpmodels.models import MAX_PLATE_NESTING


def closed_form_elbo(data, spec, params) -> torch.Tensor:
    """The natural engine's exact ELBO ``(B,)`` at ``params`` (data coordinates)."""
    base_c, shift = centred_base(spec)
    centred = params.map(lambda t: t.double())
    centred.mean = centred.mean - shift.unsqueeze(1)
    stats = full_pass(data.double(), shift, centred, 10_000, torch.device("cpu"), torch.float64)
    return elbo_from_stats(stats, centred, base_c, spec.prior)


def pyro_elbo_draws(model, guide, data, n: int) -> np.ndarray:
    """``n`` single-particle ``TraceEnum_ELBO`` estimates (ELBO, not loss)."""
    elbo = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)
    with warnings.catch_warnings():
        # Pyro notes that enumerated z is shared between model and guide; that is the design.
        warnings.simplefilter("ignore", UserWarning)
        return np.array([-elbo.loss(model, guide, data) for _ in range(n)])
