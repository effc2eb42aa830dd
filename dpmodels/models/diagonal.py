"""The expected log-density of diagonal-covariance components as one matrix product per block.

For diagonal components ``E_q[log N(x_n | mu_k, Lambda_k^-1)]`` is

    c_k - 0.5 nu_k sum_d (x_nd - m_kd)^2 / Psi_kd,   c_k = 0.5 E[log|Lambda_k|] - 0.5 D log 2 pi - 0.5 D / beta_k,

which expands to ``[x_n^2, x_n] @ W_k + b_k`` with ``W_k = (-0.5 nu_k / Psi_k, nu_k m_k / Psi_k)``
``(2D,)`` and ``b_k = c_k - 0.5 nu_k sum_d m_kd^2 / Psi_kd``: one ``(n, 2D) x (2D, U)`` product
per block of points, no ``(n, K, D)`` temporary. The same per-point features ``[x^2, x]`` give
the statistics ``sum_n r_nk x_n^2`` and ``sum_n r_nk x_n`` as one ``(L, n) x (n, 2D)`` product, so
a pass computes ``x^2`` once per block for both.

The expanded square loses digits when ``|x - m|`` is small against ``|x|`` (cancellation), so
points and means are first shifted by ``centre`` (the mean of the component means: the forms are
translation invariant), and the statistics are shifted back in float64. The weights are built in
float64 from float64 parameters and cast to the pass's dtype once per pass. Components with
exactly equal parameters (every empty one sits at the prior) are evaluated once, as in
:class:`~dpmodels.models.quadratic.QuadraticPlan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .quadratic import _distinct_components

__all__ = ["PAD_COLUMNS", "DiagPlan", "diag_plan"]

LOG_2PI = math.log(2 * math.pi)
# the weights' columns are padded to a multiple of this: on a 2-core AMD EPYC (MKL, one thread)
# [2048 x 1024] @ [1024 x U] took 1.1 ms at U = 16, 2.2 at 32 and 2.8 at 48, but 2.6-8.2 ms at
# widths in between (8.2 at U = 11, 7.6 at 49)
PAD_COLUMNS = 16


@dataclass
class DiagPlan:
    """What a pass needs for diagonal components, built once per pass by :func:`diag_plan`.

    ``centre (B, D)``: the mean of the component means; ``offset (B, D)``: what is subtracted from
    the points a pass hands in before the features are formed (``centre``, plus the pass's
    centring ``shift`` when the points come uncentred: one subtraction instead of two);
    ``weights (B, 2D, U')`` in the pass's dtype: ``[xc^2, xc] @ weights`` holds the data terms of
    the expected log-densities of the ``U`` distinct components in its first ``U`` columns (``U'``:
    ``U`` rounded up to a multiple of :data:`PAD_COLUMNS` with zero columns, which BLAS multiplies
    several times faster than odd widths); ``index (B, K)`` maps the ``U`` back to all ``K``
    (``None``: the ``K`` components are distinct); ``bias (B, K)``: the constant terms of each of
    the ``K``."""

    K: int
    U: int
    centre: Tensor
    offset: Tensor
    weights: Tensor
    bias: Tensor
    index: Tensor | None

    @property
    def num_features(self) -> int:
        return self.centre.shape[-1]

    def expand(self, t: Tensor) -> Tensor:
        """``t (B, n, U) -> (B, n, K)`` by the per-fit map ``index``."""
        if self.index is None:
            return t
        idx = self.index.to(t.device).unsqueeze(1).expand(t.shape[0], t.shape[1], self.K)
        return torch.gather(t, 2, idx)

    def features(self, x: Tensor) -> Tensor:
        """``[xc^2, xc]`` ``(B, n, 2D)`` with ``xc = x - offset``, for ``x (B, n, D)``."""
        B, n, D = x.shape
        feats = torch.empty(B, n, 2 * D, dtype=x.dtype, device=x.device)
        xc = torch.sub(x, self.offset.unsqueeze(1), out=feats[..., D:])
        torch.mul(xc, xc, out=feats[..., :D])
        return feats

    def log_likelihood(self, feats: Tensor) -> Tensor:
        """``E_q[log N(x_n | mu_k, Lambda_k^-1)]`` ``(B, n, K)`` from ``feats`` (:meth:`features`)."""
        return self.expand((feats @ self.weights)[..., : self.U]) + self.bias.unsqueeze(1)


def diag_plan(
    params, dtype: torch.dtype, device=None, shift: Tensor | None = None, dedupe: bool = True
) -> DiagPlan:
    """The :class:`DiagPlan` of diagonal ``params`` (any dtype; the weights are computed in float64
    and cast to ``dtype``). ``shift (B, D)``: the centring of the parameters, when the points will
    be handed in uncentred (``x - shift`` is then never formed)."""
    p = params.map(lambda t: t.detach().to(device=device, dtype=torch.float64))
    mean, scale, beta, nu = p.mean, p.scale, p.mean_precision, p.dof  # (B, K, D), (B, K, D), (B, K), (B, K)
    B, K, D = mean.shape
    index = None
    if dedupe and K > 1:
        unique, index = _distinct_components([mean, scale, beta, nu])
        if len(unique) == K:
            index = None
        else:
            unique, index = unique.to(mean.device), index.to(mean.device)
            mean, scale, beta, nu = mean[:, unique], scale[:, unique], beta[:, unique], nu[:, unique]
    centre = mean.mean(1)  # (B, D)
    m = mean - centre.unsqueeze(1)
    prec = 1.0 / scale  # (B, U, D)
    e_log_det = D * torch.digamma(0.5 * nu) - torch.log(0.5 * scale).sum(-1)  # (B, U)
    const = 0.5 * e_log_det - 0.5 * D * LOG_2PI - 0.5 * D / beta
    weights = torch.cat([-0.5 * nu.unsqueeze(-1) * prec, nu.unsqueeze(-1) * m * prec], -1)  # (B, U, 2D)
    bias = const - 0.5 * nu * (m * m * prec).sum(-1)
    offset = centre if shift is None else centre + shift.to(centre)
    U = weights.shape[1]
    padded = weights.new_zeros(B, 2 * D, -(-U // PAD_COLUMNS) * PAD_COLUMNS)
    padded[..., :U] = weights.transpose(1, 2)
    if index is not None:
        bias = torch.gather(bias, 1, index)  # (B, K)
    return DiagPlan(K, U, centre.to(dtype), offset.to(dtype), padded.to(dtype), bias.to(dtype), index)
