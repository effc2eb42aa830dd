"""Fit in standardised coordinates, report in the user's units.

The estimator fits ``z = (x - centre) / scale``: ``centre (B, D)`` is the data mean and ``scale (B,)``
one global length, the root mean of the per-feature variances, both computed in float64 before the
points are cast to the engines' float32. The fit then does not depend on the units or the offset
of the data: ``a * x + b`` gives the same ``z`` (up to sign), hence the same clusters, for any
``a != 0`` and ``b``, where float32 alone loses clusters offset by 1e8 (the ulp there is 8) and a
fixed ridge swamps data scaled by 1e-5.

The conjugate family is closed under this map, so the posterior is mapped back exactly:
``mean_x = centre + scale * mean_z``, ``Psi_x = scale^2 Psi_z`` (Wishart and Gamma alike),
``mean_precision`` and ``dof`` unchanged; log densities gain ``-D log(scale)`` per point.

**Data on a subspace** (full covariance): where the points span only ``D' < D`` directions (a
channel that is the sum of others, probability rows, constant channels), ``z`` also projects on an
orthonormal basis ``Q (D, D')`` of the data's range: ``z = Q^T (x - centre) / scale``. A mixture
fitted on all ``D`` coordinates would be pulled towards fewer clusters there: along a direction of
zero variance a component's marginal likelihood grows like ``N_k log N_k`` (the Wishart's
normaliser, with no scatter to balance it), so the exact bound rewards merging. Fitted on the
range, the clusters are those of the data, and log densities are densities on the data's affine
subspace (``-D' log(scale)``). Back in the user's ``D`` coordinates every component gets the same
expected precision ``1 / (scale^2 tau)`` across the null space (``Psi_perp = scale^2 tau nu_k``,
``tau`` = :data:`NULL_SPACE_VARIANCE` of the ``z`` units), so maps and draws in those coordinates
rank the components as the fit does (up to terms of order ``1 / nu_k`` per point).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..data.source import PointSource, chunk_rows
from .base_measure import BaseMeasure

__all__ = [
    "AffineScaling",
    "NULL_SPACE_VARIANCE",
    "StandardizedSource",
    "range_basis",
    "repeat_source",
    "standardize",
]

NULL_SPACE_VARIANCE = 1e-3  # tau: the null space's variance in z units (the base measure's ridge)
RANGE_RTOL = 1e-7  # directions with variance below this fraction of the largest are the null space


def range_basis(cov: Tensor, rtol: float = RANGE_RTOL) -> Tensor | None:
    """An orthonormal basis ``Q (B, D, D')`` of the directions of ``cov (B, D, D)`` (float64) with
    variance above ``rtol`` times the largest, or ``None`` where every direction has variance
    (``D' = D``). Every fit of the batch must have the same ``D'``."""
    eig, vec = torch.linalg.eigh(cov)  # ascending eigenvalues
    keep = eig > rtol * eig[..., -1:].clamp_min(1e-300)  # (B, D)
    ranks = keep.sum(-1).unique()
    if len(ranks) != 1:
        raise ValueError(
            f"the data sets of one batch span different numbers of directions: {ranks.tolist()}."
        )
    rank = int(ranks[0])
    if rank == cov.shape[-1]:
        return None
    return vec[..., cov.shape[-1] - rank :].flip(-1).contiguous()  # largest variance first


@dataclass
class AffineScaling:
    """``z = (x - centre) / scale`` per fit: ``centre (B, D)`` and ``scale (B,)``, float64 on the CPU;
    with ``basis (B, D, D')`` also projected on the data's range, ``z = Q^T (x - centre) / scale``.
    ``variances (B, D)``: the data's per-feature variances that :meth:`from_source` measured (float64;
    ``None`` otherwise), so that :meth:`z_moments` needs no second pass."""

    centre: Tensor
    scale: Tensor
    basis: Tensor | None = None
    variances: Tensor | None = None

    @property
    def num_features(self) -> int:
        """``D'``: the width of ``z``."""
        return self.centre.shape[-1] if self.basis is None else self.basis.shape[-1]

    def with_range(self, source: PointSource, group=None) -> AffineScaling:
        """This scaling, projecting on the range of ``source``'s points where they span fewer than
        ``D`` directions (see the module's docstring)."""
        cov = source.moments("full", group=group)[1] / self.scale.pow(2)[:, None, None]
        return replace(self, basis=range_basis(cov))

    def _null_projector(self, dtype, device) -> Tensor:
        q = self.basis.to(dtype=dtype, device=device)
        eye = torch.eye(q.shape[1], dtype=dtype, device=device)
        return eye - q @ q.transpose(-1, -2)  # (B, D, D)

    def _embed_scale(self, psi: Tensor, dof: Tensor) -> Tensor:
        """``Psi (B, K, D', D')`` on the range and ``nu (B, K)``: ``Q Psi Q^T + tau nu P_perp``."""
        q = self.basis.to(dtype=psi.dtype, device=psi.device).unsqueeze(1)  # (B, 1, D, D')
        perp = self._null_projector(psi.dtype, psi.device).unsqueeze(1)
        return q @ psi @ q.transpose(-1, -2) + NULL_SPACE_VARIANCE * dof[..., None, None] * perp

    @classmethod
    def from_source(cls, source: PointSource, group=None) -> AffineScaling:
        """Data mean and root-mean variance (1 where every feature is constant), one chunked pass
        (over the points of all ranks of ``group``, a :class:`~dpmodels.distributed.DataParallel`)."""
        mean, var = source.moments("diag", group=group)  # float64 (B, D), (B, D)
        rms = var.clamp_min(0.0).mean(-1).sqrt()  # (B,)
        return cls(mean, torch.where(rms > 0, rms, torch.ones_like(rms)), variances=var)

    def z_moments(self) -> tuple[Tensor, Tensor] | None:
        """The mean ``(B, D)`` and per-feature variances ``(B, D)`` of ``z`` (float64), from the
        data's moments measured by :meth:`from_source` (``z``'s mean is zero, its variances are the
        data's divided by ``scale^2``), equal to those of the float32 ``z`` up to its rounding;
        ``None`` without those moments or with a ``basis``."""
        if self.variances is None or self.basis is not None:
            return None
        return torch.zeros_like(self.centre), self.variances / self.scale.pow(2)[:, None]

    @classmethod
    def identity(cls, batch: int, features: int) -> AffineScaling:
        return cls(torch.zeros(batch, features, dtype=torch.float64), torch.ones(batch, dtype=torch.float64))

    def select(self, index: int) -> AffineScaling:
        basis = None if self.basis is None else self.basis[index : index + 1]
        return AffineScaling(self.centre[index : index + 1], self.scale[index : index + 1], basis)

    def expand(self, batch: int) -> AffineScaling:
        basis = None if self.basis is None else self.basis.expand(batch, -1, -1).clone()
        return AffineScaling(self.centre.expand(batch, -1).clone(), self.scale.expand(batch).clone(), basis)

    def log_det(self) -> Tensor:
        """``D' log(scale)`` ``(B,)``: what a log density in ``z`` exceeds the one in ``x`` by (on the
        data's subspace when there is a ``basis``)."""
        return self.num_features * self.scale.log()

    def apply(self, x: Tensor, dtype: torch.dtype = torch.float32, fits=slice(None)) -> Tensor:
        """``z`` of ``x (B, n, D)`` (or ``(n, D)`` for a single fit), computed in float64."""
        centre, scale = self.centre[fits], self.scale[fits]
        x64 = x.to(dtype=torch.float64)
        centre, scale = centre.to(x64.device), scale.to(x64.device)
        if x.dim() == 2:
            z = (x64 - centre.reshape(-1)) / scale.reshape(())
            if self.basis is not None:
                z = z @ self.basis[fits].to(x64.device).reshape(x.shape[-1], -1)
            return z.to(dtype)
        z = (x64 - centre.unsqueeze(-2)) / scale[..., None, None]
        if self.basis is not None:
            z = z @ self.basis[fits].to(x64.device)
        return z.to(dtype)

    def base_to_user(self, base: BaseMeasure) -> BaseMeasure:
        s = self.scale.to(base.mean.device)
        mean, scale = base.mean.double(), base.scale.double()
        if self.basis is not None:
            mean = (self.basis.to(mean.device) @ mean.unsqueeze(-1)).squeeze(-1)
            scale = self._embed_scale(scale.unsqueeze(1), base.dof.double().unsqueeze(1)).squeeze(1)
        mean = self.centre.to(base.mean.device) + s[:, None] * mean
        factor = s.pow(2)[:, None, None] if base.covariance == "full" else s.pow(2)[:, None]
        return replace(base, mean=mean.to(base.mean.dtype), scale=(factor * scale).to(base.scale.dtype))

    def scale_to_z(self, scale, covariance: str, features: int) -> Tensor | None:
        """A user's ``Psi`` override (scalar, ``(D, D)`` or ``(D,)``, user units) in ``z`` units ``(B, ...)``."""
        if scale is None:
            return None
        psi = torch.as_tensor(scale, dtype=torch.float64)
        B, s2 = len(self.scale), self.scale.pow(2)
        if covariance == "full":
            if psi.dim() == 0:
                psi = psi * torch.eye(features, dtype=torch.float64)
            elif self.basis is not None:  # a (D, D) matrix of the user's: its restriction to the range
                psi = self.basis.transpose(-1, -2) @ psi @ self.basis
            return psi.expand(B, features, features) / s2[:, None, None]
        return psi.expand(B, features) / s2[:, None]

    def params_to_user(self, params):
        """Variational parameters ``(B, K, ...)`` fitted on ``z``, in the user's units."""
        dev, dtype = params.mean.device, params.mean.dtype
        s = self.scale.to(dev)
        mean, tril = params.mean.double(), params.scale_tril
        if self.basis is not None:  # back to all D coordinates (see the module's docstring)
            mean = mean @ self.basis.to(dev).transpose(-1, -2)
            psi = tril.double() @ tril.double().transpose(-1, -2)
            tril = torch.linalg.cholesky(self._embed_scale(psi, params.dof.double()))
        out = replace(params, mean=(self.centre.to(dev)[:, None] + s[:, None, None] * mean).to(dtype))
        if tril is not None:
            out.scale_tril = (s[:, None, None, None] * tril.double()).to(params.scale_tril.dtype)
        if params.scale is not None:
            out.scale = (s.pow(2)[:, None, None] * params.scale.double()).to(params.scale.dtype)
        if params.loadings is not None:
            out.loadings = (s[:, None, None, None] * params.loadings.double()).to(params.loadings.dtype)
        return out

    def result_to_user(self, result):
        """A :class:`~dpmodels.infer.FitResult` on ``z`` in the user's units (ELBOs gain the Jacobian)."""
        log_det = self.log_det()  # (B,)
        spec = replace(result.spec, base=self.base_to_user(result.spec.base))
        return replace(
            result,
            params=self.params_to_user(result.params),
            spec=spec,
            elbo=result.elbo - result.num_points * log_det.to(result.elbo),
            elbo_history=result.elbo_history - log_det.to(result.elbo_history),
            info={**result.info, "standardized": {"centre": self.centre, "scale": self.scale}},
        )


class StandardizedSource(PointSource):
    """A :class:`PointSource` that hands out ``z`` chunks of another one (file-backed data stays on disk)."""

    def __init__(self, source: PointSource, scaling: AffineScaling, dtype: torch.dtype = torch.float32):
        self.__dict__.update(source.__dict__)
        self._inner, self._scaling, self.dtype = source, scaling, dtype

    @property
    def shape(self) -> torch.Size:
        B, N, _ = self._inner.shape
        return torch.Size((B, N, self._scaling.num_features))

    def __getitem__(self, key) -> Tensor:
        inner = self._inner
        saved, inner.dtype = inner.dtype, torch.float64  # read the raw chunk in float64
        try:
            chunk = inner[key]
        finally:
            inner.dtype = saved
        fits = key[0] if isinstance(key, tuple) else key
        if isinstance(fits, Tensor):
            fits = fits.cpu()
        return self._scaling.apply(chunk, self.dtype, fits)


def standardize(
    source: PointSource, dtype: torch.dtype = torch.float32, group=None, on_range: bool = False
) -> tuple[PointSource, AffineScaling]:
    """``(z source, scaling)``: in-memory data become one ``z`` tensor (built chunk by chunk),
    file-backed data a view that standardises each chunk it reads. With ``group`` the centre and
    scale are those of all ranks' points together. ``on_range``: project on the data's range where
    the points span fewer directions than features (:meth:`AffineScaling.with_range`)."""
    scaling = AffineScaling.from_source(source, group)
    if on_range:
        scaling = scaling.with_range(source, group)
    raw = PointSource(source)
    if source._mapping is not None:
        return StandardizedSource(raw, scaling, dtype), scaling
    B, N, D = source.shape
    z = torch.empty(B, N, scaling.num_features, dtype=dtype)
    raw.dtype = torch.float64
    step = chunk_rows(B, D)
    for start in range(0, N, step):
        z[:, start : start + step] = scaling.apply(raw[:, start : start + step], dtype)
    return PointSource(z), scaling


def repeat_source(source: PointSource, repeat: int) -> PointSource:
    """A single standardised data set shown ``repeat`` times (restarts), without copying."""
    if isinstance(source, StandardizedSource):
        inner = PointSource(source._inner, repeat=repeat)
        return StandardizedSource(inner, source._scaling.expand(repeat), source.dtype)
    return PointSource(source, repeat=repeat)
