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
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..data.source import PointSource, chunk_rows
from .base_measure import BaseMeasure

__all__ = ["AffineScaling", "StandardizedSource", "repeat_source", "standardize"]


@dataclass
class AffineScaling:
    """``z = (x - centre) / scale`` per fit: ``centre (B, D)`` and ``scale (B,)``, float64 on the CPU."""

    centre: Tensor
    scale: Tensor

    @classmethod
    def from_source(cls, source: PointSource, group=None) -> AffineScaling:
        """Data mean and root-mean variance (1 where every feature is constant), one chunked pass
        (over the points of all ranks of ``group``, a :class:`~dpmodels.distributed.DataParallel`)."""
        mean, var = source.moments("diag", group=group)  # float64 (B, D), (B, D)
        rms = var.clamp_min(0.0).mean(-1).sqrt()  # (B,)
        return cls(mean, torch.where(rms > 0, rms, torch.ones_like(rms)))

    @classmethod
    def identity(cls, batch: int, features: int) -> AffineScaling:
        return cls(torch.zeros(batch, features, dtype=torch.float64), torch.ones(batch, dtype=torch.float64))

    def select(self, index: int) -> AffineScaling:
        return AffineScaling(self.centre[index : index + 1], self.scale[index : index + 1])

    def expand(self, batch: int) -> AffineScaling:
        return AffineScaling(self.centre.expand(batch, -1).clone(), self.scale.expand(batch).clone())

    def log_det(self) -> Tensor:
        """``D log(scale)`` ``(B,)``: what a log density in ``z`` exceeds the one in ``x`` by."""
        return self.centre.shape[-1] * self.scale.log()

    def apply(self, x: Tensor, dtype: torch.dtype = torch.float32, fits=slice(None)) -> Tensor:
        """``z`` of ``x (B, n, D)`` (or ``(n, D)`` for a single fit), computed in float64."""
        centre, scale = self.centre[fits], self.scale[fits]
        x64 = x.to(dtype=torch.float64)
        centre, scale = centre.to(x64.device), scale.to(x64.device)
        if x.dim() == 2:
            return ((x64 - centre.reshape(-1)) / scale.reshape(())).to(dtype)
        return ((x64 - centre.unsqueeze(-2)) / scale[..., None, None]).to(dtype)

    def base_to_user(self, base: BaseMeasure) -> BaseMeasure:
        s = self.scale.to(base.mean.device)
        mean = self.centre.to(base.mean.device) + s[:, None] * base.mean.double()
        factor = s.pow(2)[:, None, None] if base.covariance == "full" else s.pow(2)[:, None]
        return replace(
            base, mean=mean.to(base.mean.dtype), scale=(factor * base.scale.double()).to(base.scale.dtype)
        )

    def scale_to_z(self, scale, covariance: str, features: int) -> Tensor | None:
        """A user's ``Psi`` override (scalar, ``(D, D)`` or ``(D,)``, user units) in ``z`` units ``(B, ...)``."""
        if scale is None:
            return None
        psi = torch.as_tensor(scale, dtype=torch.float64)
        B, s2 = len(self.scale), self.scale.pow(2)
        if covariance == "full":
            if psi.dim() == 0:
                psi = psi * torch.eye(features, dtype=torch.float64)
            return psi.expand(B, features, features) / s2[:, None, None]
        return psi.expand(B, features) / s2[:, None]

    def params_to_user(self, params):
        """Variational parameters ``(B, K, ...)`` fitted on ``z``, in the user's units."""
        dev, dtype = params.mean.device, params.mean.dtype
        s = self.scale.to(dev)
        out = replace(
            params, mean=(self.centre.to(dev)[:, None] + s[:, None, None] * params.mean.double()).to(dtype)
        )
        if params.scale_tril is not None:
            out.scale_tril = (s[:, None, None, None] * params.scale_tril.double()).to(params.scale_tril.dtype)
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
    source: PointSource, dtype: torch.dtype = torch.float32, group=None
) -> tuple[PointSource, AffineScaling]:
    """``(z source, scaling)``: in-memory data become one ``z`` tensor (built chunk by chunk),
    file-backed data a view that standardises each chunk it reads. With ``group`` the centre and
    scale are those of all ranks' points together."""
    scaling = AffineScaling.from_source(source, group)
    raw = PointSource(source)
    if source._mapping is not None:
        return StandardizedSource(raw, scaling, dtype), scaling
    B, N, D = source.shape
    z = torch.empty(B, N, D, dtype=dtype)
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
