"""Quadratic forms of many points against many components, in the form that suits the width ``D``.

Every E-step, predictive density and responsibility needs ``maha[b, n, k] = (x_n - m_k)^T P_k
(x_n - m_k)`` with ``P_k = Psi_k^-1 = L_k^-T L_k^-1`` (``Psi_k = L_k L_k^T``), and every M-step the
scatter ``sum_n r_nk x_n x_n^T``. Two exact forms, equal in flops (``n K D^2``), differ in memory
traffic:

* ``"features"``: per-point second moments ``phi_n = vec(x_n x_n^T)`` (``D^2`` values per point), then
  one matrix product against ``vec(P_k)`` and, for the scatter, ``r^T phi``. One large product and
  few kernel launches: fastest at small ``D``; but it writes and reads ``D^2`` values per point.
* ``"whitened"``: per component ``y = x L_k^-T - m_k L_k^-T`` (one batched matmul over a block of
  points, ``D`` values per point and component) and ``|y|^2``; the scatter as ``(r_k * x)^T x``.
  No ``D^2`` per-point temporaries: fastest at large ``D``.

:func:`choose_form` picks one from a cost model measured on a 2-core CPU (see
:data:`WHITENED_FROM_D`). Memory is bounded whatever ``n``: points are processed in blocks so that
no temporary exceeds :data:`BLOCK_ELEMENTS` values (``B * n_block * D^2`` for features,
``B * K' * n_block * D`` for the whitened form), i.e. 16 MiB in float32, plus the per-component
factors ``(B, K, D, D)``.

Components with exactly equal parameters within a fit (e.g. every empty component, which sits at
the prior) are evaluated once: :class:`QuadraticPlan` keeps the distinct ones (``unique``) and a
per-fit map back to all ``K`` (``index``). Diagonal covariances use ``P_k = diag(1 / Psi_k)``
directly (``D`` values per point either way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "BLOCK_ELEMENTS",
    "WHITENED_FROM_D",
    "QuadraticPlan",
    "choose_form",
    "plan_quadratic",
    "second_moments",
    "weighted_scatter",
]

BLOCK_ELEMENTS = 2**22  # largest temporary, in values (16 MiB in float32)
# Full covariance: the whitened form from this width on. Measured with 2 torch threads on a shared
# 2-core CPU (load 2-7), float32, K = 50 distinct components, one fit, E-step with scatter, time
# per point features / whitened: 0.87 at D = 8, 0.64 at 16, 0.72 at 32, 0.92 at 48, 0.97 at 64,
# 1.22 at 96, 1.99 at 128, 4.11 at 256 (the features form's blocks shrink as D^2 grows).
WHITENED_FROM_D = 64


def choose_form(covariance: str, num_features: int) -> str:
    """``"diag"`` for diagonal covariances; for full ones ``"features"`` below
    :data:`WHITENED_FROM_D` features and ``"whitened"`` from there on."""
    if covariance != "full":
        return "diag"
    return "whitened" if num_features >= WHITENED_FROM_D else "features"


def _distinct_components(tensors: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``unique (U,)`` component ids and ``index (B, K)`` into them such that component ``k`` of fit
    ``b`` equals component ``unique[index[b, k]]`` of that fit exactly, in every tensor."""
    B, K = tensors[0].shape[:2]
    flat = torch.cat([t.detach().reshape(B, K, -1) for t in tensors], -1)  # (B, K, F)
    rep = torch.arange(K).expand(B, K).clone()
    keys = flat[..., :2].cpu().tolist()  # a cheap key first; equality checked on the full rows
    for b in range(B):
        seen: dict[tuple, list[int]] = {}
        for k in range(K):
            for j in seen.get(tuple(keys[b][k]), []):
                if torch.equal(flat[b, j], flat[b, k]):
                    rep[b, k] = j
                    break
            else:
                seen.setdefault(tuple(keys[b][k]), []).append(k)
    unique = torch.unique(rep)  # sorted component ids needed by some fit  (U,)
    position = torch.full((K,), -1, dtype=torch.long)
    position[unique] = torch.arange(len(unique))
    return unique, position[rep]


@dataclass
class QuadraticPlan:
    """Per-component factors for :meth:`mahalanobis` and :meth:`scatter`, built once per pass.

    ``form``: ``"features"``, ``"whitened"`` or ``"diag"``; ``unique (U,)`` and ``index (B, K)``: see
    :func:`_distinct_components` (``None``: all ``K`` components, ``index`` the identity);
    ``factor``: ``L^-T (B, U, D, D)`` (whitened), ``vec(P) (B, U, D*D)`` (features) or ``1 / Psi
    (B, U, D)`` (diag); ``centre (B, D)``: the mean of the component means, subtracted from points
    and means alike (the forms are translation invariant; this keeps the features form free of
    cancellation on data far from the origin); ``mean (B, U, D)`` (centred), ``shift (B, U, D)`` =
    ``m L^-T`` (whitened) or ``P m`` (otherwise), ``m_p_m (B, U)`` = ``m^T P m`` (features, diag)."""

    form: str
    K: int
    unique: Tensor | None
    index: Tensor | None
    factor: Tensor
    centre: Tensor
    mean: Tensor
    shift: Tensor
    m_p_m: Tensor | None

    @property
    def num_features(self) -> int:
        return self.mean.shape[-1]

    def _block(self, B: int) -> int:
        D, U = self.num_features, self.factor.shape[1]
        width = {"features": D * D, "whitened": U * D}.get(self.form, D + U)  # temporary values per point
        return max(64, BLOCK_ELEMENTS // max(1, B * width))

    def expand(self, t: Tensor) -> Tensor:
        """``t (B, n, U) -> (B, n, K)`` by the per-fit map ``index``."""
        if self.index is None:
            return t
        idx = self.index.to(t.device).unsqueeze(1).expand(t.shape[0], t.shape[1], self.K)
        return torch.gather(t, 2, idx)

    def mahalanobis(self, x: Tensor) -> Tensor:
        """``(x_n - m_k)^T Psi_k^-1 (x_n - m_k)`` ``(B, n, K)`` for ``x (B, n, D)``, in blocks."""
        x = x - self.centre.unsqueeze(1)
        step = self._block(x.shape[0])
        parts = [self._maha_unique(x[:, i : i + step]) for i in range(0, x.shape[1], step)]
        return self.expand(torch.cat(parts, 1) if len(parts) > 1 else parts[0])

    def _maha_unique(self, x: Tensor) -> Tensor:
        if self.form == "whitened":
            y = x.unsqueeze(1) @ self.factor - self.shift.unsqueeze(-2)  # (B, U, n, D)
            return y.pow(2).sum(-1).transpose(1, 2)  # (B, n, U)
        quad = second_moments(x, self.form) @ self.factor.transpose(1, 2)  # (B, n, U)
        maha = quad - 2.0 * (x @ self.shift.transpose(1, 2)) + self.m_p_m.unsqueeze(1)
        return maha.clamp_min(0.0)

    def scatter(self, r: Tensor, x: Tensor) -> Tensor:
        """:func:`weighted_scatter` in this plan's form."""
        return weighted_scatter(r, x, self.form)


def weighted_scatter(r: Tensor, x: Tensor, form: str, block: int = 2048) -> Tensor:
    """``sum_n r_nk x_n x_n^T`` ``(B, K, D, D)`` (or ``sum_n r_nk x_n^2`` ``(B, K, D)`` for ``"diag"``)
    in float64, for ``r (B, n, K)`` and ``x (B, n, D)``.

    Sums run in the inputs' dtype over blocks of at most ``block`` points (fewer when a temporary
    would exceed :data:`BLOCK_ELEMENTS`) and in float64 across blocks, so that long float32 chunks
    keep the digits the scatter needs. Components without responsibility in a block are skipped.
    The full-covariance scatter is ``(r_k * x)^T x`` per component (no ``D^2`` per-point features)
    in the ``"whitened"`` form, ``r^T vec(x x^T)`` in the ``"features"`` form."""
    B, n, K = r.shape
    D = x.shape[-1]
    out = torch.zeros((B, K, D) if form == "diag" else (B, K, D, D), dtype=torch.float64, device=x.device)
    width = {"features": D * D, "whitened": K * D}.get(form, D + K)  # temporary values per point
    step = max(16, min(block, BLOCK_ELEMENTS // max(1, B * width)))
    for i in range(0, n, step):
        r_b, x_b = r[:, i : i + step], x[:, i : i + step]  # (B, m, K), (B, m, D)
        live = (r_b > 0).any(1).any(0).nonzero().flatten()  # components with weight in the block
        if len(live) == 0:
            continue
        r_t = r_b[..., live].transpose(1, 2) if len(live) < K else r_b.transpose(1, 2)  # (B, L, m)
        if form == "whitened":
            weighted = (r_t.unsqueeze(-1) * x_b.unsqueeze(1)).transpose(-1, -2)  # (B, L, D, m)
            s2 = weighted @ x_b.unsqueeze(1)  # (B, L, D, D)
        elif form == "features":
            s2 = (r_t @ second_moments(x_b, "full")).reshape(B, -1, D, D)
        else:
            s2 = r_t @ (x_b * x_b)  # (B, L, D)
        if len(live) < K:
            out[:, live] += s2.double()
        else:
            out += s2.double()
    return out


def second_moments(x: Tensor, covariance: str) -> Tensor:
    """Per-point second-moment features ``phi``: ``vec(x x^T)`` ``(B, n, D*D)`` (full) or ``x**2``
    ``(B, n, D)`` (diag). (The full ``D*D`` outer product measured faster than gathering its upper
    triangle.)"""
    if covariance in ("full", "features"):
        return (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
    return x * x


def _inverse_tril(tril: Tensor) -> Tensor:
    eye = torch.eye(tril.shape[-1], dtype=tril.dtype, device=tril.device).expand_as(tril)
    return torch.linalg.solve_triangular(tril, eye, upper=False)


def plan_quadratic(
    covariance: str,
    mean: Tensor,
    scale_tril: Tensor | None = None,
    scale: Tensor | None = None,
    form: str | None = None,
    dedupe: bool = True,
) -> QuadraticPlan:
    """The plan for components ``mean (B, K, D)`` with ``Psi = scale_tril scale_tril^T`` (full) or
    ``Psi = diag(scale)`` (diag). ``form``: ``None`` asks :func:`choose_form`. ``dedupe``: evaluate
    exactly equal components once (off automatically when the parameters require gradients)."""
    B, K, D = mean.shape
    form = form or choose_form(covariance, D)
    comp = scale_tril if covariance == "full" else scale
    unique = index = None
    if dedupe and not (mean.requires_grad or comp.requires_grad) and K > 1:
        unique, index = _distinct_components([mean, comp])
        if len(unique) == K:
            unique = index = None
        else:
            unique, index = unique.to(mean.device), index.to(mean.device)
            mean, comp = mean[:, unique], comp[:, unique]
    centre = mean.mean(1)  # (B, D)
    mean = mean - centre.unsqueeze(1)
    m_p_m = None
    if form == "whitened":
        factor = _inverse_tril(comp).transpose(-1, -2)  # L^-T  (B, U, D, D)
        shift = (mean.unsqueeze(-2) @ factor).squeeze(-2)  # m L^-T  (B, U, D)
    elif form == "features":
        prec = torch.cholesky_inverse(comp)  # (B, U, D, D)
        shift = (prec @ mean.unsqueeze(-1)).squeeze(-1)  # P m  (B, U, D)
        factor = prec.flatten(-2)  # (B, U, D*D)
        m_p_m = (mean * shift).sum(-1)
    else:
        factor = 1.0 / comp  # (B, U, D)
        shift = mean * factor
        m_p_m = (mean * shift).sum(-1)
    return QuadraticPlan(form, K, unique, index, factor, centre, mean, shift, m_p_m)
