"""The cluster palette: cluster ``k`` (canonical order, largest weight first) is colour ``k`` in every
image and figure."""

from __future__ import annotations

import numpy as np

__all__ = ["cluster_colours"]


def cluster_colours(n: int) -> np.ndarray:
    """``(n, 3)`` RGB: matplotlib's ``tab10`` (``tab20`` beyond 10 clusters), repeated as needed."""
    from matplotlib import colormaps  # only when colours are asked for

    base = colormaps["tab10" if n <= 10 else "tab20"].colors
    return np.array([base[k % len(base)] for k in range(n)])
