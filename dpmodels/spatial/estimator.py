"""``SpatialDPGMM``: the mixture with spatially coupled assignments, scikit-learn style."""

from __future__ import annotations

import numpy as np
import torch

from .._validation import Param
from ..estimator import DPGMM
from ..infer.result import FitResult
from ..models.dpgmm import ModelSpec
from .coupled import CoupledOptions, check_coupling, fit_coupled, mean_field_assignments, unary_logits
from .grid import Grid, grid_from_index

__all__ = ["SpatialDPGMM"]


class SpatialDPGMM(DPGMM):
    """A :class:`~dpmodels.DPGMM` whose assignments are coupled to their grid neighbours.

    ``fit(X, index)`` takes the points ``X (N, D)`` and their ``index (N, 3)`` of ``(image, y, x)``
    on the layer's grid (``LayerActivations.index``). It first fits the plain mixture (merges and
    all, exactly as :class:`DPGMM` with the same settings), then, when ``coupling > 0``, runs
    coupled coordinate ascent on the Potts–mixture bound (see :mod:`dpmodels.spatial.coupled`):
    a monotone bound that equals the mixture's ELBO at ``coupling = 0``. With ``coupling = 0`` the
    fit *is* the plain mixture fit.

    Parameters beyond :class:`DPGMM`'s: ``coupling`` (``beta``, nats per agreeing pair of
    4-neighbours, fixed), ``coupled_max_iter`` and ``coupled_tol`` (iterations and change of the
    bound per point of the coupled phase). Fitted attributes beyond :class:`DPGMM`'s:
    ``grid_`` (the fit points' :class:`~dpmodels.spatial.Grid`), ``responsibilities_`` ``(N, K)``
    (the coupled ``q(z)`` of the fit points, components by weight) and ``mixture_elbo_`` (the plain
    fit's ELBO, total nats). ``elbo_`` is the coupled bound. Only the natural engine.
    """

    _parameter_constraints = {
        **DPGMM._parameter_constraints,
        "coupling": Param("any"),  # check_coupling: a finite number >= 0
        "coupled_max_iter": Param("int", low=1, hint="try 100"),
        "coupled_tol": Param("number", low=0, open_low=True, unit="nats per point", hint="try 1e-5"),
    }

    def __init__(
        self, *, coupling: float = 1.0, coupled_max_iter: int = 100, coupled_tol: float = 1e-5, **kwargs
    ):
        super().__init__(**kwargs)
        self.coupling, self.coupled_max_iter, self.coupled_tol = coupling, coupled_max_iter, coupled_tol

    def get_params(self, deep: bool = True) -> dict:
        return {
            **DPGMM.get_params(self, deep),
            "coupling": self.coupling,
            "coupled_max_iter": self.coupled_max_iter,
            "coupled_tol": self.coupled_tol,
        }

    def validate(self):
        """:meth:`DPGMM.validate` plus the coupled phase's settings (natural engine only)."""
        super().validate()
        check_coupling(self.coupling)
        if self.engine != "natural":
            raise ValueError(
                f"spatially coupled fits run on engine='natural' only, got engine={self.engine!r}; "
                "use engine='natural'."
            )
        return self

    def fit(self, X, index, *, distributed=False) -> SpatialDPGMM:  # type: ignore[override]
        """Fit to ``X (N, D)`` whose rows sit at ``index (N, 3)`` = ``(image, y, x)``. Returns ``self``.

        Coupled fits run in one process: ``distributed`` must stay ``False`` (a grid's neighbours
        would sit on other ranks); inside a process group this fits this process's ``X`` alone."""
        if distributed not in (False, None):
            raise ValueError(
                "spatially coupled fits do not run data-parallel (a position's grid neighbours may sit on "
                "another rank); fit in one process, or use DPGMM for a data-parallel fit."
            )
        self._grid = grid_from_index(index)
        return super().fit(X, distributed=False)

    def _run(self, data, spec: ModelSpec, group=None, check_degenerate: bool = True) -> FitResult:
        grid: Grid = self._grid
        if grid.num_points != data.shape[1]:
            raise ValueError(
                f"index has {grid.num_points} rows but X has {data.shape[1]} points; pass the index of "
                "exactly the points in X (e.g. acts.index[rows] for acts.points[rows])."
            )
        result = super()._run(data, spec, check_degenerate=check_degenerate)
        if self.coupling == 0.0:
            return result
        options = CoupledOptions(
            self.coupling, self.coupled_max_iter, self.coupled_tol, self.chunk_size, self.progress
        )
        return fit_coupled(data, spec, result, grid, options, self._device)

    def _adopt(self, result: FitResult, user: FitResult, scaling, index: int) -> None:
        super()._adopt(result, user, scaling, index)
        self.grid_ = self._grid
        order = self._z_posterior.order[0].cpu()
        log_resp = result.info.get("log_resp")
        if log_resp is None:
            self.mixture_elbo_ = self.elbo_
            self.responsibilities_ = None
            return
        self.responsibilities_ = log_resp[index][:, order].exp().numpy()
        steps = result.info["coupled_iterations"]
        self.mixture_elbo_ = float(user.elbo_history[-steps - 1, index]) * result.num_points

    # ---- prediction on a grid -------------------------------------------------------------------
    def log_responsibilities_on_grid(self, X, index, max_sweeps: int = 50, tol: float = 1e-4) -> torch.Tensor:
        """Coupled ``log q(z)`` ``(N, K)`` (components by weight) of points ``X`` at ``index`` with
        the fitted globals held fixed: checkerboard mean-field sweeps over the points' own grid."""
        x = self._check(X)
        grid = grid_from_index(index, num_points=x.shape[0]).to(x.device)
        params = self._z_posterior.params.map(lambda t: t.to(x.dtype))
        logits = unary_logits(params, x.unsqueeze(0), chunk=8192)  # (1, N, K), raw component order
        log_r = mean_field_assignments(logits, grid, self.coupling, max_sweeps, tol)[0]
        return log_r[:, self._z_posterior.order[0].to(log_r.device)]

    def predict_proba(self, X, index=None) -> np.ndarray:  # type: ignore[override]
        """Responsibilities ``(N, K)``; coupled over the grid when ``index`` is given, else the
        uncoupled mixture's (the points' neighbours unknown)."""
        if index is None:
            return super().predict_proba(X)
        return self.log_responsibilities_on_grid(X, index).exp().cpu().numpy()

    def predict(self, X, index=None) -> np.ndarray:  # type: ignore[override]
        """Most probable component per point ``(N,)`` (coupled when ``index`` is given)."""
        if index is None:
            return super().predict(X)
        return self.log_responsibilities_on_grid(X, index).argmax(-1).cpu().numpy()

    def __repr__(self) -> str:
        return super().__repr__().replace("DPGMM(", f"SpatialDPGMM(coupling={self.coupling}, ", 1)
