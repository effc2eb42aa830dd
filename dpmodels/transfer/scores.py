"""Shift scores: how differently does a layer respond to a target data set than to its source?

A DPGMM fitted on a layer's source position vectors is the yardstick. Held-out source positions
and target positions are scored under it the same way, so every score is ~0 (or ~its nominal
value) when the target is just more of the source, whatever the layer:

* ``predictive_drop``: mean posterior predictive log density per position *per dimension* on
  held-out source minus on target (nats/dim, so layers of different width compare; > 0 = the
  target is less likely under the source fit);
* ``occupancy_jsd``: Jensen-Shannon divergence (base 2, in ``[0, 1]``) between the source and
  target cluster occupancies (mean responsibilities ``(K,)``);
* ``novelty_share``: share of target positions whose predictive log density falls below the
  ``novelty_quantile`` quantile of the held-out source positions (identical sets give ~the
  quantile; ``novelty_excess`` is the share minus the quantile);
* ``exclusive_clusters``: clusters used by one data set (share > ``usage_threshold``) while the
  other's share stays at most ``absent_threshold``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .._validation import NotFittedError, as_points
from ..activations.types import LayerActivations
from ..estimator import DPGMM
from ..posterior import MixturePosterior

__all__ = ["as_posterior", "js_divergence", "occupancy", "shift_scores"]


def as_posterior(source_fit: DPGMM | MixturePosterior) -> MixturePosterior:
    """The ``B = 1`` posterior of a fitted :class:`DPGMM` or a one-fit :class:`MixturePosterior`."""
    if isinstance(source_fit, DPGMM):
        if not hasattr(source_fit, "posterior_"):
            raise NotFittedError("source_fit is an unfitted DPGMM; call fit(source_points) first.")
        return source_fit.posterior_
    if isinstance(source_fit, MixturePosterior):
        if source_fit.batch_size != 1:
            raise ValueError(
                f"source_fit holds {source_fit.batch_size} fits; pick one with posterior.select(b)."
            )
        return source_fit
    raise ValueError(
        f"source_fit must be a fitted DPGMM or a MixturePosterior, got {type(source_fit).__name__}."
    )


def _layer_info(x) -> tuple[str | None, int | None]:
    """``(layer name, raw channel count)`` of a LayerActivations, ``(None, None)`` otherwise."""
    if not isinstance(x, LayerActivations):
        return None, None
    channels = x.transform.channels if x.transform is not None else x.num_features
    return x.name, channels


def _points(x, name: str, D: int | None, min_points: int, why: str) -> Tensor:
    """``x`` (array, tensor or LayerActivations) as a finite ``(n, D)`` float32 tensor (any ``D``
    when ``D`` is None) with at least ``min_points`` rows; ``why`` says why that many are needed."""
    layer = f" (layer {x.name!r})" if isinstance(x, LayerActivations) else ""
    t = as_points(x.tensor() if isinstance(x, LayerActivations) else x, name=name, min_points=1)
    if D is not None and t.shape[1] != D:
        raise ValueError(
            f"{name}{layer} has {t.shape[1]} features but the source (fit) has D = {D}; use points of "
            "the same layer, mapped with the same standardisation/PCA as the fitted source points."
        )
    if t.shape[0] < min_points:
        raise ValueError(
            f"{name}{layer} has {t.shape[0]} positions, too few to score: at least {min_points} are "
            f"needed, {why}. Pass more images or positions, or lower min_points / raise novelty_quantile."
        )
    return t


def occupancy(posterior: MixturePosterior, x: Tensor) -> np.ndarray:
    """Mean responsibilities of points ``x`` ``(n, D)`` under a ``B = 1`` fit: ``(K,)``, sums to 1."""
    resp = posterior.responsibilities(x)[0]  # (n, K), canonical component order
    return resp.double().mean(0).cpu().numpy()


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (``[0, 1]``) between two discrete distributions ``(K,)``."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.shape != q.shape or p.ndim != 1 or (p < 0).any() or (q < 0).any():
        raise ValueError(
            f"expected two non-negative vectors of one length (K,), got {p.shape} and {q.shape}."
        )
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(min(max(0.5 * kl(p) + 0.5 * kl(q), 0.0), 1.0))


def shift_scores(
    source_fit: DPGMM | MixturePosterior,
    source_heldout,
    target,
    *,
    novelty_quantile: float = 0.01,
    min_points: int = 50,
    usage_threshold: float = 0.02,
    absent_threshold: float | None = None,
) -> dict:
    """Shift scores of ``target`` ``(m, D)`` against ``source_heldout`` ``(n, D)``, both scored
    under ``source_fit`` (fitted on *other* source points of the same layer).

    ``source_heldout`` and ``target`` are arrays, tensors or :class:`LayerActivations` (then their
    layer names and raw channel counts must agree). ``target`` needs ``min_points`` positions:
    occupancy shares and mean densities from fewer are too noisy to compare (a share's standard
    error is up to ``0.5 / sqrt(m)``); ``source_heldout`` needs also ``ceil(1 / novelty_quantile)``
    so that at least one held-out position lies below the novelty threshold. ``absent_threshold``
    defaults to ``usage_threshold / 4``.

    Returns a dict: ``predictive_drop`` (nats/dim), ``source_log_density`` and
    ``target_log_density`` (mean nats/dim), ``occupancy_jsd`` (bits), ``novelty_share``,
    ``novelty_excess``, ``novelty_threshold`` (nats per position), ``exclusive_clusters``
    (``{"source": [k...], "target": [k...]}``, canonical component indices),
    ``source_occupancy`` and ``target_occupancy`` (``(K,)`` arrays), ``n_heldout``, ``n_target``, ``D``.
    """
    if not 0.0 < novelty_quantile < 0.5:
        raise ValueError(f"novelty_quantile must lie in (0, 0.5), got {novelty_quantile!r}; try 0.01.")
    if int(min_points) < 2:
        raise ValueError(f"min_points must be >= 2, got {min_points!r}; try 50.")
    absent = usage_threshold / 4.0 if absent_threshold is None else absent_threshold
    if not 0.0 <= absent < usage_threshold < 1.0:
        raise ValueError(
            f"need 0 <= absent_threshold < usage_threshold < 1, got {absent!r} and {usage_threshold!r}; "
            "try usage_threshold=0.02 and absent_threshold=0.005."
        )
    (h_name, h_ch), (t_name, t_ch) = _layer_info(source_heldout), _layer_info(target)
    if h_name is not None and t_name is not None and (h_name != t_name or h_ch != t_ch):
        raise ValueError(
            f"source_heldout is layer {h_name!r} with {h_ch} channels but target is layer {t_name!r} "
            f"with {t_ch}; compare the same layer of the same network."
        )
    post = as_posterior(source_fit)
    D = post.params.num_features
    n_need = max(int(min_points), math.ceil(1.0 / novelty_quantile))
    held = _points(
        source_heldout,
        "source_heldout",
        D,
        n_need,
        f"max(min_points, ceil(1/novelty_quantile)) = {n_need} so the {novelty_quantile} quantile "
        "of held-out log densities is defined",
    )
    tgt = _points(target, "target", D, int(min_points), "for stable occupancy shares and mean densities")
    with torch.no_grad():
        log_p_held = post.log_predictive(held)[0].double().cpu()  # (n,) nats per position
        log_p_tgt = post.log_predictive(tgt)[0].double().cpu()  # (m,)
        occ_src, occ_tgt = occupancy(post, held), occupancy(post, tgt)  # (K,) each
    threshold = float(torch.quantile(log_p_held, novelty_quantile))
    share = float((log_p_tgt < threshold).double().mean())
    src_density, tgt_density = float(log_p_held.mean()) / D, float(log_p_tgt.mean()) / D
    used_s, used_t = occ_src > usage_threshold, occ_tgt > usage_threshold
    return {
        "predictive_drop": src_density - tgt_density,
        "source_log_density": src_density,
        "target_log_density": tgt_density,
        "occupancy_jsd": js_divergence(occ_src, occ_tgt),
        "novelty_share": share,
        "novelty_excess": share - novelty_quantile,
        "novelty_threshold": threshold,
        "exclusive_clusters": {
            "source": np.flatnonzero(used_s & (occ_tgt <= absent)).tolist(),
            "target": np.flatnonzero(used_t & (occ_src <= absent)).tolist(),
        },
        "source_occupancy": occ_src,
        "target_occupancy": occ_tgt,
        "n_heldout": int(held.shape[0]),
        "n_target": int(tgt.shape[0]),
        "D": D,
    }
