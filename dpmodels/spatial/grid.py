"""The neighbourhood of each position on its layer's grid.

A layer's points carry an index ``(N, 3)`` of ``(image, y, x)``. Two points are neighbours when
they belong to the same image and sit one step apart horizontally or vertically (the
4-neighbourhood). That graph is bipartite: the colour ``(y + x) mod 2`` splits it into two sets
with no edge inside either, so all points of one colour can be updated at once (a checkerboard
sweep) without breaking coordinate ascent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Grid", "grid_from_index"]


@dataclass(frozen=True)
class Grid:
    """Neighbours of ``N`` points on their layer's grid.

    ``neighbours (N, 4)``: the row of the point to the left, right, above and below (``-1``: none
    in the point set); ``edges (E, 2)``: each neighbouring pair once; ``colour (N,)``: ``(y + x) mod 2``.
    """

    neighbours: Tensor
    edges: Tensor
    colour: Tensor

    @property
    def num_points(self) -> int:
        return int(self.neighbours.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])

    def to(self, device) -> Grid:
        return Grid(self.neighbours.to(device), self.edges.to(device), self.colour.to(device))


def _as_index(index) -> np.ndarray:
    idx = index.detach().cpu().numpy() if isinstance(index, Tensor) else np.asarray(index)
    if idx.ndim != 2 or idx.shape[1] != 3:
        raise ValueError(
            f"index must have shape (N, 3) holding (image, y, x) per point, got {tuple(idx.shape)}; "
            "use LayerActivations.index of the points you fit."
        )
    if idx.size and (not np.issubdtype(idx.dtype, np.integer) and not np.all(idx == np.round(idx))):
        raise ValueError("index must hold integer (image, y, x) coordinates.")
    idx = idx.astype(np.int64)
    if idx.size and idx.min() < 0:
        raise ValueError(
            f"index holds negative coordinates (min {int(idx.min())}); expected (image, y, x) >= 0."
        )
    return idx


def grid_from_index(index, num_points: int | None = None) -> Grid:
    """The 4-neighbour :class:`Grid` of points indexed ``(image, y, x)`` (an ``(N, 3)`` array or tensor).

    ``num_points``, when given, must equal ``N`` (the number of points the grid is meant for): a
    grid that does not match its points is an error, not a silent misalignment. Duplicate
    positions are refused."""
    idx = _as_index(index)
    N = len(idx)
    if num_points is not None and num_points != N:
        raise ValueError(
            f"the grid index has {N} rows but there are {num_points} points; pass the index of exactly "
            "the points being fitted (LayerActivations.index[fit rows])."
        )
    if N == 0:
        empty = torch.zeros(0, 4, dtype=torch.long)
        return Grid(empty, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    height, width = int(idx[:, 1].max()) + 3, int(idx[:, 2].max()) + 3
    # a key per position, with a one-position border so that off-grid neighbours never alias
    key = (idx[:, 0] * height + idx[:, 1] + 1) * width + idx[:, 2] + 1
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    if N > 1 and bool((np.diff(sorted_key) == 0).any()):
        raise ValueError(
            "the grid index holds the same (image, y, x) twice; each point needs its own position."
        )
    steps = np.array([-1, 1, -width, width])  # left, right, up, down
    want = key[:, None] + steps[None, :]  # (N, 4)
    pos = np.clip(np.searchsorted(sorted_key, want), 0, N - 1)
    found = sorted_key[pos] == want
    neighbours = np.where(found, order[pos], -1)
    rows = np.arange(N)
    pairs = [np.stack([rows[neighbours[:, j] >= 0], neighbours[neighbours[:, j] >= 0, j]], 1) for j in (1, 3)]
    edges = np.concatenate(pairs, 0)
    colour = (idx[:, 1] + idx[:, 2]) % 2
    return Grid(torch.from_numpy(neighbours), torch.from_numpy(edges), torch.from_numpy(colour))
