"""How clusters of one layer map onto clusters of the next: co-occurrence at input resolution."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["transition_matrix"]


def transition_matrix(
    labels_from: Tensor, labels_to: Tensor, k_from: int | None = None, k_to: int | None = None
) -> np.ndarray:
    """Row-normalised co-occurrence ``(k_from, k_to)`` of two label maps at input resolution.

    ``labels_from``, ``labels_to``: ``(I, H, W)`` int labels of the same pixels (e.g. consecutive
    layers' ``LayerMaps.at_input("labels")``); pixels labelled ``-1`` in either are skipped. Entry
    ``[a, b]`` is the share of layer-``from`` cluster ``a``'s pixels that the next layer puts in
    cluster ``b`` (rows of clusters with no pixels are zero).
    """
    a, b = torch.as_tensor(labels_from), torch.as_tensor(labels_to)
    if a.shape != b.shape:
        raise ValueError(
            f"both label maps must cover the same pixels, got shapes {tuple(a.shape)} and {tuple(b.shape)}; "
            "resample both to input resolution with LayerMaps.at_input('labels')."
        )
    if a.is_floating_point() or b.is_floating_point():
        raise ValueError("label maps must hold integer cluster indices, got floating point values.")
    keep = (a >= 0) & (b >= 0)
    a, b = a[keep].long().numpy(), b[keep].long().numpy()
    k_from = int(a.max(initial=-1)) + 1 if k_from is None else int(k_from)
    k_to = int(b.max(initial=-1)) + 1 if k_to is None else int(k_to)
    if a.size and (a.max() >= k_from or b.max() >= k_to):
        raise ValueError(f"labels exceed the given cluster counts ({k_from}, {k_to}).")
    counts = np.zeros((k_from, k_to), dtype=np.float64)
    np.add.at(counts, (a, b), 1.0)
    rows = counts.sum(1, keepdims=True)
    return np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
