"""Joint usage: one DPGMM fitted on source and target positions together, and who uses which cluster.

A fit on the source alone cannot hold a cluster for content it never saw: novel target positions
fall into the nearest source cluster (they show up as low predictive density, see
:func:`~dpmodels.transfer.shift_scores`). A joint fit gives such content its own cluster, and the
per-data-set usage of every cluster shows what is shared and what is exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..estimator import DPGMM
from .scores import _layer_info, _points, js_divergence, occupancy

__all__ = ["JointUsage", "joint_usage"]


@dataclass
class JointUsage:
    """Result of :func:`joint_usage`.

    Attributes
    ----------
    model : the DPGMM fitted on both data sets together.
    usage : one row per cluster used by either set (share > ``usage_threshold``): ``cluster``
        (canonical index), ``source_share``, ``target_share`` (mean responsibility within each set),
        ``source_count``, ``target_count`` (expected number of positions) and ``kind``
        (``"shared"``, ``"source-only"`` or ``"target-only"``).
    source_only, target_only : clusters exclusive to one set (the other's share <= ``absent_threshold``).
    occupancy_jsd : Jensen-Shannon divergence (bits) between the two sets' cluster shares.
    n_source, n_target : positions of each set in the joint fit.
    """

    model: DPGMM
    usage: pd.DataFrame
    source_only: list[int]
    target_only: list[int]
    occupancy_jsd: float
    n_source: int
    n_target: int


def _subsample(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= n:
        return x
    keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[keep.sort().values]


def joint_usage(
    source,
    target,
    *,
    balance: bool = True,
    usage_threshold: float = 0.02,
    absent_threshold: float | None = None,
    min_points: int = 50,
    **dpgmm_kwargs,
) -> JointUsage:
    """Fit one DPGMM on ``source`` ``(n, D)`` and ``target`` ``(m, D)`` stacked, then report each
    cluster's usage per data set.

    ``source``/``target``: arrays, tensors or :class:`LayerActivations` of the same layer.
    ``balance``: subsample the larger set (seeded by ``dpgmm_kwargs["seed"]``, default 0) to the
    size of the smaller one, so neither dominates the fit. A cluster is *used* by a set when its
    share there exceeds ``usage_threshold``, *absent* when it is at most ``absent_threshold``
    (default ``usage_threshold / 4``). ``dpgmm_kwargs`` go to :class:`DPGMM` (e.g. ``truncation``,
    ``covariance``, ``seed``). Each set needs ``min_points`` positions.
    """
    absent = usage_threshold / 4.0 if absent_threshold is None else absent_threshold
    if not 0.0 <= absent < usage_threshold < 1.0:
        raise ValueError(
            f"need 0 <= absent_threshold < usage_threshold < 1, got {absent!r} and {usage_threshold!r}."
        )
    (s_name, s_ch), (t_name, t_ch) = _layer_info(source), _layer_info(target)
    if s_name is not None and t_name is not None and (s_name != t_name or s_ch != t_ch):
        raise ValueError(
            f"source is layer {s_name!r} with {s_ch} channels but target is layer {t_name!r} with {t_ch}; "
            "compare the same layer of the same network."
        )
    why = "so that each set's cluster shares are stable"
    src = _points(source, "source", None, int(min_points), why)
    tgt = _points(target, "target", src.shape[1], int(min_points), why)
    if balance:
        seed = int(dpgmm_kwargs.get("seed", 0))
        n = min(src.shape[0], tgt.shape[0])
        src, tgt = _subsample(src, n, seed), _subsample(tgt, n, seed + 1)
    model = DPGMM(**dpgmm_kwargs).fit(torch.cat([src, tgt]))  # fitted on (n + m, D)
    post = model.posterior_
    with torch.no_grad():
        share_s, share_t = occupancy(post, src), occupancy(post, tgt)  # (K,) each
    used = (share_s > usage_threshold) | (share_t > usage_threshold)
    kinds = np.where(share_t <= absent, "source-only", np.where(share_s <= absent, "target-only", "shared"))
    table = pd.DataFrame(
        {
            "cluster": np.arange(len(share_s)),
            "source_share": share_s,
            "target_share": share_t,
            "source_count": share_s * src.shape[0],
            "target_count": share_t * tgt.shape[0],
            "kind": kinds,
        }
    )[used].reset_index(drop=True)
    return JointUsage(
        model=model,
        usage=table,
        source_only=table.loc[table.kind == "source-only", "cluster"].tolist(),
        target_only=table.loc[table.kind == "target-only", "cluster"].tolist(),
        occupancy_jsd=js_divergence(share_s, share_t),
        n_source=int(src.shape[0]),
        n_target=int(tgt.shape[0]),
    )
